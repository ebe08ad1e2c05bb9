"""Users keyed by e-mail, and personal API tokens (stored hashed, shown once)."""

from __future__ import annotations

import unicodedata

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone


def login_address(address: str) -> str:
    """The form in which two typed addresses are one log-in: NFKC, then casefold. The user
    lookup and the log-in rate limit (accounts/login.py) both use it."""
    return unicodedata.normalize("NFKC", address.strip()).casefold()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def _create(self, email: str, password: str | None, **extra: object) -> User:
        if not email:
            raise ValueError("An e-mail address is required.")
        # Accounts made here are verified unless the caller says otherwise (SPEC A2): operators'
        # and staff accounts; sign-up passes `email_verified_at=None` through create_user.
        extra.setdefault("email_verified_at", extra.get("date_joined") or timezone.now())
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **extra: object) -> User:
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create(email, password, **extra)

    def create_superuser(self, email: str, password: str | None = None, **extra: object) -> User:
        extra["is_staff"] = True
        extra["is_superuser"] = True
        return self._create(email, password, **extra)

    def get_by_natural_key(self, username: str | None) -> User:
        """The account an address logs in as (Django's ModelBackend asks here), under one
        normalisation, `login_address`: "Alice@Example.com" is alice@example.com, and so is
        "ſtaff@…" for staff@… (the long s is a compatibility form of "s"; the log-in form's NFKC
        already turns it into one). PostgreSQL's case-insensitive match (UPPER) also folds the
        dotless "ı" into "I", but "alıce@…" is another address, not alice's: the database finds
        the candidates and the normalised comparison decides."""
        typed = (username or "").strip()
        wanted = login_address(typed)
        candidates = self.filter(Q(email__iexact=typed) | Q(email__iexact=wanted)).order_by("pk")
        for user in candidates:
            if login_address(user.email) == wanted:
                return user
        raise self.model.DoesNotExist("No account logs in with this address.")


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField(max_length=254, unique=True)
    full_name = models.CharField(max_length=150, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # SPEC A2: when the address was proven (a link sent to it was followed); None until then,
    # and an unverified customer may browse but not buy a plan or add credits.
    email_verified_at = models.DateTimeField(null=True, blank=True)
    # SPEC E1: the customer's e-mail preferences. Receipts and notices about the account
    # cannot be turned off; the renewal reminder can.
    renewal_reminders = models.BooleanField(
        default=True, help_text="E-mail a reminder 3 days before a renewal the balance won't cover."
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]
        permissions = [("delete_account", "Can delete customer accounts")]

    def __str__(self) -> str:
        return self.email

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None


class ApiToken(models.Model):
    """A personal API token. Only a SHA-256 of the token is kept; its prefix helps recognise it."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, default="API token")
    prefix = models.CharField(max_length=12)
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
