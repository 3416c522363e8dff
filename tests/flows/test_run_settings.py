"""The Prefect settings a local run's flows see (flows/params.py local_results)."""

from __future__ import annotations

from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings


def test_no_flow_run_heartbeats_on_kdflows_own_server(tmp_path, monkeypatch):
    """The heartbeat thread holds up the end of every flow run by up to a second; kdflow's temporary
    server has no automation that reads heartbeats."""
    from flows.params import local_results

    monkeypatch.setenv("KDFLOW_PREFECT", "ephemeral")
    default = get_current_settings().flows.heartbeat_frequency
    assert default  # Prefect sends them by default
    with temporary_settings(restore_defaults={PREFECT_API_URL}), local_results(tmp_path):
        assert get_current_settings().flows.heartbeat_frequency is None
        assert str(get_current_settings().results.local_storage_path) == str(tmp_path / "prefect-results")
    assert get_current_settings().flows.heartbeat_frequency == default


def test_a_users_server_keeps_its_heartbeats(tmp_path):
    from flows.params import local_results

    default = get_current_settings().flows.heartbeat_frequency
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}), local_results(tmp_path):
        assert get_current_settings().flows.heartbeat_frequency == default
