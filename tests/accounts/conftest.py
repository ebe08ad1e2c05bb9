import pytest

from tests.smtp import smtp_inbox  # noqa: F401 (a fixture: the SMTP server on loopback)


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    """Hashing with the production hasher costs most of a test's time; the tests here check
    behaviour around passwords, not the hasher's strength."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
