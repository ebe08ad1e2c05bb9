"""BYOK keys are encrypted at rest with MultiFernet; old keys keep decrypting after rotation
(SPEC B1, I5, S4)."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.db import connection

from byok.models import ByokKey
from byok.services import decrypted_key

pytestmark = pytest.mark.django_db

KEY = "sk-live-encrypted-0123456789"


def add(api, api_key: str = KEY) -> int:
    r = api.post(
        "/api/v1/byok",
        {"provider_id": "minimax", "api_key": api_key},
        content_type="application/json",
    )
    assert r.status_code == 201, r.content
    return r.json()["id"]


def raw_row(key_id: int) -> tuple:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM byok_byokkey WHERE id = %s", [key_id])
        return cursor.fetchone()


def test_database_row_holds_no_plaintext(api, settings):
    key_id = add(api)
    row = raw_row(key_id)
    text = " ".join(str(v) for v in row)
    assert KEY not in text
    assert KEY[3:-4] not in text  # not even the middle of it
    stored = ByokKey.objects.get(pk=key_id).encrypted_key
    fernet = MultiFernet([Fernet(k) for k in settings.CODING_PLANS_ENCRYPTION_KEYS])
    assert fernet.decrypt(stored.encode()).decode() == KEY


def test_replacing_reencrypts_and_leaves_no_plaintext(api, settings):
    key_id = add(api)
    first = ByokKey.objects.get(pk=key_id).encrypted_key
    api.patch(
        f"/api/v1/byok/{key_id}",
        {"api_key": "sk-live-second-9999"},
        content_type="application/json",
    )
    stored = ByokKey.objects.get(pk=key_id).encrypted_key
    assert stored != first
    assert "sk-live-second-9999" not in " ".join(str(v) for v in raw_row(key_id))
    assert decrypted_key(ByokKey.objects.get(pk=key_id)) == "sk-live-second-9999"


def test_same_key_twice_gives_different_ciphertexts(api, make_user):
    from tests.conftest import api_client_for

    one = ByokKey.objects.get(pk=add(api)).encrypted_key
    two = ByokKey.objects.get(pk=add(api_client_for(make_user()))).encrypted_key
    assert one != two


def test_rotation_old_ciphertext_still_decrypts_when_a_new_key_is_first(api, settings, standin):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.CODING_PLANS_ENCRYPTION_KEYS = [old]
    key_id = add(api)
    stored = ByokKey.objects.get(pk=key_id).encrypted_key
    assert Fernet(old).decrypt(stored.encode()).decode() == KEY

    settings.CODING_PLANS_ENCRYPTION_KEYS = [new, old]
    assert decrypted_key(ByokKey.objects.get(pk=key_id)) == KEY
    # The key test still works through the whole stack.
    r = api.post(f"/api/v1/byok/{key_id}/test")
    assert r.json() == {"ok": True, "error": None}
    assert standin.state.calls()[0]["key"] == KEY

    # New writes are encrypted with the first (new) key only.
    api.patch(
        f"/api/v1/byok/{key_id}",
        {"api_key": "sk-live-rotated-4444"},
        content_type="application/json",
    )
    rewritten = ByokKey.objects.get(pk=key_id).encrypted_key
    assert Fernet(new).decrypt(rewritten.encode()).decode() == "sk-live-rotated-4444"
    with pytest.raises(InvalidToken):
        Fernet(old).decrypt(rewritten.encode())

    # Once the old key is retired, only the re-encrypted value remains readable.
    settings.CODING_PLANS_ENCRYPTION_KEYS = [new]
    assert decrypted_key(ByokKey.objects.get(pk=key_id)) == "sk-live-rotated-4444"


def test_model_repr_and_str_show_only_the_hint(api):
    key = ByokKey.objects.get(pk=add(api))
    for text in (repr(key), str(key)):
        assert KEY not in text
        assert key.encrypted_key not in text
        assert "…6789" in text
