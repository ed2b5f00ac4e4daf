"""The decoder's pure parts: URI masking, sealing, geometry, filters, timing."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from its_camera_ai.common import ConfigError, DecoderSettings, InvalidArgumentError, load_settings
from its_camera_ai.decoder import (
    FrameClock,
    KeyRing,
    Sealed,
    SealedUnreadable,
    SourceKind,
    UriError,
    Verdict,
    compile_list_query,
    load_key_ring,
    mask_uri,
    page_token_after,
    parse_source_uri,
    scrub,
)
from its_camera_ai.scene import polygon_problem
from tests.decoder.conftest import new_key


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("rtsp://admin:pw@10.0.0.5/stream1", "rtsp://admin:***@10.0.0.5/stream1"),
        ("rtsp://admin@10.0.0.5/stream1", "rtsp://admin@10.0.0.5/stream1"),
        ("rtsp://10.0.0.5:554/a?udp", "rtsp://10.0.0.5:554/a?udp"),
        ("https://h/x.m3u8?PWD=1&b=2&token=t#frag", "https://h/x.m3u8?PWD=***&b=2&token=***#frag"),
        ("http://u:p@ss:wd@h/a?sig=1&signature=s", "http://u:***@h/a?sig=1&signature=***"),
        ("rtsp://u:p/w@h/a", "rtsp://u:***@h/a"),
        ("udp://@239.0.0.1:1234", "udp://@239.0.0.1:1234"),
        ("file:///srv/a.mp4", "file:///srv/a.mp4"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


@given(
    user=st.text("abcdefgh", min_size=1, max_size=8),
    password=st.text("ABCDEFGHIJKLMNOP0123456789-._~!$&'()*+,;=:@/%", min_size=4, max_size=20),
    token=st.text("QRSTUVWXYZ", min_size=4, max_size=12),
)
def test_masking_never_shows_a_secret(user: str, password: str, token: str) -> None:
    uri = f"rtsp://{user}:{password}@cam.example:554/live?channel=1&auth={token}"
    assert password not in mask_uri(uri).replace(MASK := "***", "")
    assert token not in mask_uri(uri)
    message = f"cannot open {uri}: refused (password {password}, token {token})"
    scrubbed = scrub(message, uri)
    assert password not in scrubbed.replace(MASK, "")
    assert token not in scrubbed


def test_source_uris(tmp_path: Path) -> None:
    video = tmp_path / "a b.mp4"
    assert parse_source_uri("rtsps://cam/x", file_roots=()).kind is SourceKind.RTSP
    assert parse_source_uri("sim://road?seed=3", file_roots=()).kind is SourceKind.SYNTHETIC
    parsed = parse_source_uri(
        "file:///" + str(video).lstrip("/").replace(" ", "%20"), file_roots=[tmp_path]
    )
    assert parsed.path == video
    outside = tmp_path.parent / "link"
    outside.symlink_to("/etc")
    for uri, unsupported in [
        ("ftp://h/x", True),
        ("file:///x.mp4", True),  # file sources disabled: no roots
        ("rtsp://:554/x", False),
        ("rtsp://h:0/x", False),
        ("rtsp://h:99999/x", False),
        ("http://h/x y", False),
        ("camera-7", True),
    ]:
        with pytest.raises(UriError) as caught:
            parse_source_uri(uri, file_roots=())
        assert caught.value.unsupported is unsupported, uri
    for uri in (
        f"file://{tmp_path}/../x.mp4",
        f"file://{outside}/passwd",
        "file://host/x",
        "file:x",
    ):
        with pytest.raises(UriError):
            parse_source_uri(uri, file_roots=[tmp_path])


def test_key_ring_seals_opens_and_rotates(tmp_path: Path) -> None:
    first = KeyRing.parse(f"k1:{new_key()}", origin="test")
    sealed = first.seal("rtsp://u:p@h/", context="cam-a")
    assert first.open(sealed, context="cam-a") == "rtsp://u:p@h/"
    with pytest.raises(SealedUnreadable):
        first.open(sealed, context="cam-b")  # moved to another row
    tampered = Sealed(sealed.key_id, sealed.blob[:-1] + bytes([sealed.blob[-1] ^ 1]))
    with pytest.raises(SealedUnreadable):
        first.open(tampered, context="cam-a")
    rotated = KeyRing.parse(f"k2:{new_key()}, k1:{new_key()}", origin="test")
    assert rotated.primary_id == "k2"
    assert rotated.needs_reseal(Sealed("k1", b""))
    with pytest.raises(SealedUnreadable):
        rotated.open(Sealed("k9", sealed.blob), context="cam-a")
    for text in (
        "",
        "k1",
        f"bad id:{new_key()}",
        "k1:!!!",
        "k1:c2hvcnQ=",
        f"k1:{new_key()} k1:{new_key()}",
    ):
        with pytest.raises(ConfigError) as caught:
            KeyRing.parse(text, origin="decoder.source_keys")
        assert caught.value.args[0].startswith("decoder.source_keys")


def test_key_loading_by_environment(tmp_path: Path) -> None:
    secret = tmp_path / "keys"
    secret.write_text(f"mounted:{new_key()}\n")
    assert (
        load_key_ring(DecoderSettings(source_keys_file=secret), "production").primary_id
        == "mounted"
    )
    with pytest.raises(ConfigError):
        load_key_ring(DecoderSettings(), "production")
    dev = DecoderSettings(dev_source_keys_file=tmp_path / "dev" / "keys")
    generated = load_key_ring(dev, "dev")
    assert (tmp_path / "dev" / "keys").stat().st_mode & 0o777 == 0o600
    assert load_key_ring(dev, "dev").primary_id == generated.primary_id  # kept across restarts


def test_polygons_and_collinearity() -> None:
    assert polygon_problem([(0, 0), (4, 0), (4, 4), (0, 4)]) is None
    assert polygon_problem([(0, 0), (4, 0), (2, 1)]) is None
    assert "intersects itself" in (polygon_problem([(0, 0), (4, 4), (4, 0), (0, 4)]) or "")
    # A vertex touching a non-adjacent edge is not simple either.
    assert "intersects itself" in (polygon_problem([(0, 0), (4, 0), (2, 0), (2, 3)]) or "")
    assert polygon_problem([(0, 0), (1, 1), (2, 2)]) == "has zero area"
    assert polygon_problem([(0, 0), (1, 0)]) == "needs at least 3 vertices"
    assert "repeat" in (polygon_problem([(0, 0), (1, 0), (1, 1), (0, 0)]) or "")


def test_filters_compile_to_parameters_only() -> None:
    query = compile_list_query('display_name:"x\'; DROP TABLE t; --" OR loop = true', "", 0, "")
    assert "DROP" not in query.where
    assert query.params == ("x'; DROP TABLE t; --", True)
    assert query.limit == 50
    assert compile_list_query("", "", 5000, "").limit == 1000
    nested = "(" * 40 + "loop = true" + ")" * 40
    with pytest.raises(InvalidArgumentError):
        compile_list_query(nested, "", 0, "")
    token = page_token_after(query, {"camera_id": "cam-a"})
    assert compile_list_query('display_name:"x\'; DROP TABLE t; --" OR loop = true', "", 7, token)
    with pytest.raises(InvalidArgumentError):
        compile_list_query("", "", 0, token)


def test_frame_clock_thins_evenly_and_detects_lateness() -> None:
    stop = threading.Event()
    clock = FrameClock(target_fps=10, pace=False, live=False, max_lag=1.0, stop=stop)
    verdicts = [clock.judge(i / 30) for i in range(30)]
    assert verdicts.count(Verdict.DELIVER) == 10
    assert all(v is Verdict.DELIVER for v in verdicts[::3])

    live = FrameClock(target_fps=0, pace=False, live=True, max_lag=0.05, stop=stop)
    assert live.judge(0.0) is Verdict.DELIVER
    time.sleep(0.1)
    assert live.judge(0.01) is Verdict.LATE  # 0.1 s of wall time for 0.01 s of video
    live.restart()
    assert live.judge(0.02) is Verdict.DELIVER

    paced = FrameClock(target_fps=0, pace=True, live=False, max_lag=1.0, stop=stop)
    started = time.monotonic()
    for i in range(4):
        paced.wait_until(i * 0.05)  # a replay's packets come when a camera's would
        assert paced.judge(i * 0.05) is Verdict.DELIVER
    assert time.monotonic() - started >= 0.14


def test_a_source_slower_than_real_time_loses_frames_but_never_stops_delivering() -> None:
    """A paced simulator (or a live camera) whose frames take longer than their interval:
    lag grows past max_lag. The late frame is lost and counted; the stream goes on. (It
    once stayed late forever: three 720p simulated cameras on two busy cores never wrote a
    first frame, so their rings never existed.)"""
    stop = threading.Event()
    for pace, live in ((True, False), (False, True)):
        clock = FrameClock(target_fps=0, pace=pace, live=live, max_lag=0.03, stop=stop)
        verdicts = []
        for i in range(12):
            media = i * 0.005
            if pace:
                clock.wait_until(media)
            time.sleep(0.02)  # rendering or decoding: four times the frame interval
            verdicts.append(clock.judge(media))
        assert Verdict.LATE in verdicts, (pace, verdicts)
        # After each loss it delivers again: never more than one late frame in a row here.
        assert verdicts[-4:].count(Verdict.DELIVER) >= 2, (pace, verdicts)


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ITS_DECODER__FILE_ROOTS", '["/srv/replay"]')
    monkeypatch.setenv("ITS_DECODER__RING_PIXEL_FORMAT", "nv12")
    settings = load_settings(config_dir=tmp_path).decoder
    assert settings.file_roots == (Path("/srv/replay"),)
    assert settings.ring_pixel_format == "nv12"
    monkeypatch.setenv("ITS_DECODER__RING_SLOTS", "1")
    monkeypatch.setenv("ITS_DECODER__COLOUR", "red")
    with pytest.raises(ConfigError) as caught:
        load_settings(config_dir=tmp_path)
    assert "decoder.ring_slots" in str(caught.value)
    assert "decoder.colour" in str(caught.value)
