from rest_framework.negotiation import BaseContentNegotiation


class JSONOnlyNegotiation(BaseContentNegotiation):
    """The API speaks JSON only, so it answers in JSON whatever ``Accept`` asks for.

    Refusing with 406 would turn a client's ``Accept: application/problem+json``,
    a perfectly reasonable header, into an error on every request.
    """

    def select_parser(self, request, parsers):
        for parser in parsers:
            if request.content_type.split(";")[0].strip().lower() == parser.media_type:
                return parser
        return None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
