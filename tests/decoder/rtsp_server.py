"""A real RTSP server for the decoder tests: Debian's gst-rtsp-server, run by /usr/bin/python3.

    /usr/bin/python3 rtsp_server.py PORT [--user U --password P] [--codec h264|h265]
        [--width W --height H --fps F]

Serves a live test pattern, encoded as H.264 (or H.265) per connection, at
rtsp://127.0.0.1:PORT/stream, over TCP or UDP as the client asks; with --user/--password
it requires HTTP Basic authentication. Prints "ready" on stdout once listening and runs
until killed. Not imported by the tests: it needs the system's GObject bindings.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

_ENCODERS = {
    "h264": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph264pay",
    "h265": "x265enc tune=zerolatency speed-preset=ultrafast key-int-max=30 ! rtph265pay",
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--codec", choices=sorted(_ENCODERS), default="h264")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={args.width},"
        f"height={args.height},framerate={args.fps}/1 ! {_ENCODERS[args.codec]} name=pay0 pt=96 )"
    )
    factory.set_shared(True)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_role_from_structure(
            Gst.Structure.new_from_string(
                "viewer, media.factory.access=true, media.factory.construct=true"
            )
        )
        factory.set_permissions(permissions)
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        return 1
    print("ready", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
