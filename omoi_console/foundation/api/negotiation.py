from rest_framework.negotiation import DefaultContentNegotiation


class JSONOnlyNegotiation(DefaultContentNegotiation):
    """The API speaks JSON only, so it answers in JSON whatever ``Accept`` asks for.

    Refusing with 406 would turn a client's ``Accept: application/problem+json``,
    a perfectly reasonable header, into an error on every request. Parsers are
    chosen by DRF's usual rules.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
