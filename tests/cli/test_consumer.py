"""The stop signals of a stream consumer (``engram_cli.cli.consumer``), in this process."""

from __future__ import annotations

import signal

import pytest

from engram_cli.cli.consumer import Stopped, StopSignals


def test_sigterm_stops_like_ctrl_c_and_the_old_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as stopped, StopSignals():
        signal.raise_signal(signal.SIGTERM)
        pytest.fail("SIGTERM did not stop it")  # pragma: no cover
    assert isinstance(stopped.value, KeyboardInterrupt)
    assert stopped.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.usefixtures("interruptible")
def test_a_stop_signal_waits_for_the_end_of_a_held_block_and_is_told_once() -> None:
    done = []
    with pytest.raises(Stopped) as stopped, StopSignals() as stops, stops.held():
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # once stopping, changes nothing
        done.append("shown and counted")
    assert done == ["shown and counted"]
    assert stopped.value.signum == signal.SIGINT


def test_an_ignored_signal_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with StopSignals():
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
