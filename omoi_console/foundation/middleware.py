from django.core.exceptions import SuspiciousOperation


class RefuseNulInURL:
    """A URL with a NUL character is refused with 400 before any view looks it up.

    No stored text can hold NUL (Postgres refuses it outright), so a lookup by
    such a path or filter could only fail, as a database error. Reading the
    query here also applies Django's field-count bound to every request.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        query = request.GET
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values)
            for key, values in query.lists()
        ):
            raise SuspiciousOperation("NUL character in the URL")
        return self.get_response(request)
