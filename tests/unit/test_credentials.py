"""One Authorization rule and one URL redaction for every client (store, Kibana, settings)."""

from __future__ import annotations

import argparse

from pipeline.commands.kibana import _authorization_header
from pipeline.config import load_settings
from pipeline.credentials import authorization, redact_url


def test_api_key_wins_and_id_key_is_encoded_for_every_client() -> None:
    encoded = "ApiKey aWQ6a2V5"  # base64("id:key")
    assert authorization(api_key="id:key") == encoded
    assert authorization(api_key="aWQ6a2V5") == encoded
    assert authorization(api_key="aWQ6a2V5", username="u", password="p") == encoded
    assert _authorization_header("u", "p", "id:key") == {"Authorization": encoded}
    assert _authorization_header("", "", "") == {}
    assert authorization(username="u", password="") == "Basic dTo="


def test_redact_url_drops_user_info_only() -> None:
    assert redact_url("https://u:p@h:9200/x?y=1") == "https://h:9200/x?y=1"
    assert redact_url("http://u@[::1]:9200") == "http://[::1]:9200"
    assert redact_url("http://h:9200") == "http://h:9200"
    assert redact_url("not a url") == "not a url"
    # An unparsable port still loses its credentials.
    assert redact_url("http://u:p@h:notaport/x") == "http://h:notaport/x"


def test_settings_never_show_credentials() -> None:
    settings = load_settings(es_url="https://elastic:s3cret@es.example:9200")
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.redacted())
    assert argparse.Namespace  # the flags mirror the settings (pipeline.config)
