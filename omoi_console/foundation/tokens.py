"""Bearer tokens that are stored hashed and shown once.

A token reads ``omoi_<kind>_<lookup>_<secret>``. ``lookup`` is stored in clear
and indexed so that authentication is one query; only a SHA-256 of the whole
token is stored, which is enough for 256 random bits (a slow password hash
would only add latency to every heartbeat).
"""

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from django.db import models
from django.utils import timezone

# Writing last_used_at on every request would turn every heartbeat into an
# extra write; once a minute is precise enough to spot a stale token.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# The public part of a token: 12 hex digits, stored in clear for the lookup.
LOOKUP_PATTERN = r"[0-9a-f]{12}"


def split_token(raw: str, kind: str) -> str | None:
    """Return the lookup part of a well-formed token of ``kind``, else None."""
    parts = raw.split("_", 3)
    if len(parts) != 4 or parts[0] != "omoi" or parts[1] != kind:
        return None
    lookup = parts[2]
    if not re.fullmatch(LOOKUP_PATTERN, lookup):
        return None
    return lookup


class HashedToken(models.Model):
    KIND = ""  # set by subclasses: "op" for operators, "ag" for agents
    OWNER = ""  # the foreign key to what the token stands for, fetched in the same query

    name = models.CharField(max_length=100, blank=True)
    lookup = models.CharField(max_length=12, unique=True, editable=False)
    token_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    def __str__(self):
        return f"{self.name or 'token'} ({self.lookup})"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def issue(cls, **fields):
        """Create a token row; return it with the plaintext, which is never stored."""
        token, raw = cls.unsaved(**fields)
        token.save(force_insert=True)
        return token, raw

    @classmethod
    def unsaved(cls, **fields):
        """A new token row not yet saved (for ``bulk_create``) and its plaintext."""
        lookup = secrets.token_hex(6)
        raw = f"omoi_{cls.KIND}_{lookup}_{secrets.token_urlsafe(32)}"
        return cls(lookup=lookup, token_hash=hash_token(raw), **fields), raw

    @classmethod
    def authenticate(cls, raw: str):
        """Return the active token row that ``raw`` proves, else None."""
        lookup = split_token(raw, cls.KIND)
        if lookup is None:
            return None
        token = (
            cls.objects.select_related(cls.OWNER)
            .filter(lookup=lookup, revoked_at__isnull=True)
            .first()
        )
        if token is None or not hmac.compare_digest(token.token_hash, hash_token(raw)):
            return None
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            type(token).objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token

    @classmethod
    def revoke_lookup(cls, lookup: str) -> bool:
        """Revoke the token with this lookup id; False when there is none."""
        token = cls.objects.filter(lookup=lookup).first()
        if token is None:
            return False
        token.revoke()
        return True

    def revoke(self):
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
