"""API exceptions of our own, in a module that imports nothing of DRF but its exceptions.

The parser raises these; DRF's settings import the parser; so a module the
parser imports must not import anything that reads DRF's settings.
"""

from rest_framework import exceptions


class RequestTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = "Request body is too large."
    default_code = "request_too_large"
