"""Speed-only settings for the lifecycle tests; behaviour under test is unchanged."""

import pytest

from tests.lifecycle.helpers import relax_commit_durability


@pytest.fixture(scope="session", autouse=True)
def _fast_commits(django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        relax_commit_durability()


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # PBKDF2 at Django's default cost takes a noticeable fraction of a second per user; the
    # lifecycle does not depend on the hash algorithm.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
