"""CMAF fragments (``moof`` + ``mdat``) written directly, on the stream's own timeline.

The initialization segment comes from libavformat's mp4 muxer (``empty_moov``: ftyp + moov
with ``mvex``, no samples). Fragments are built here so their timing is exactly the packets':
``tfdt`` = the first decode time, ``trun`` version 1 with per-sample durations, sizes, flags and
signed composition offsets (B-frames keep their presentation times without edit lists).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import av
from av.stream import Stream

from vilokanam.packager.boxes import find_boxes
from vilokanam.packager.nal import annexb_to_length_prefixed
from vilokanam.packager.packets import MediaPacket

INIT_MOVFLAGS = "+empty_moov+default_base_moof+cmaf+skip_trailer"
SYNC_SAMPLE = 0x02000000  # sample_depends_on = 2: depends on no other sample
NON_SYNC_SAMPLE = 0x01010000  # depends on others, sample_is_non_sync_sample
TFHD_DEFAULT_BASE_IS_MOOF = 0x020000
TRUN_FLAGS = 0x000001 | 0x000100 | 0x000200 | 0x000400 | 0x000800
"""data-offset, sample duration, size, flags and composition time offset present."""


@dataclass(frozen=True)
class Track:
    track_id: int
    timescale: int
    annexb: bool = False
    """H.264 packets with start codes (libx264's output): rewritten with 4-byte sizes."""


def uses_annexb(template: Stream) -> bool:
    """True for H.264 whose configuration is Annex B (no ``avcC`` record): so are its packets."""
    context = template.codec_context
    extradata = context.extradata if context is not None else None
    return template.type == "video" and bool(extradata) and extradata[0] != 1  # type: ignore[index]


def init_segment(templates: Sequence[Stream]) -> bytes:
    """ftyp + moov for tracks with the templates' codec parameters, in that order."""
    buffer = io.BytesIO()
    output = av.open(buffer, "w", format="mp4", container_options={"movflags": INIT_MOVFLAGS})
    try:
        for template in templates:
            output.add_stream_from_template(template)
        output.start_encoding()
    finally:
        output.close()
    return buffer.getvalue()


def read_tracks(init: bytes) -> list[Track]:
    """Track IDs (``tkhd``) and timescales (``mdhd``) of an init segment, in trak order."""
    tracks = []
    for trak in find_boxes(init, "moov/trak"):
        (tkhd,) = find_boxes(init, "tkhd", trak.payload, trak.end)
        (mdhd,) = find_boxes(init, "mdia/mdhd", trak.payload, trak.end)
        tkhd_version, mdhd_version = init[tkhd.payload], init[mdhd.payload]
        # version 0: creation, modification (4 bytes each); version 1: 8 bytes each
        track_id = struct.unpack_from(">I", init, tkhd.payload + (20 if tkhd_version else 12))[0]
        timescale = struct.unpack_from(">I", init, mdhd.payload + (20 if mdhd_version else 12))[0]
        tracks.append(Track(track_id, timescale))
    return tracks


def fragment(
    tracks: Sequence[Track], packets: Sequence[Sequence[MediaPacket]], sequence_number: int
) -> bytes:
    """moof + mdat holding each track's packets (decode order); empty tracks are left out."""
    samples = [
        [annexb_to_length_prefixed(p.data) if track.annexb else p.data for p in track_packets]
        for track, track_packets in zip(tracks, packets, strict=True)
    ]
    present = [i for i, track in enumerate(packets) if track]
    trafs_size = sum(_traf_size(len(packets[i])) for i in present)
    moof_size = 8 + 16 + trafs_size
    offset = moof_size + 8
    trafs = []
    for i in present:
        trafs.append(_traf(tracks[i], packets[i], samples[i], offset))
        offset += sum(len(s) for s in samples[i])
    mfhd = _full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number & 0xFFFFFFFF))
    moof = _box(b"moof", mfhd + b"".join(trafs))
    assert len(moof) == moof_size
    mdat = _box(b"mdat", b"".join(b"".join(samples[i]) for i in present))
    return moof + mdat


def _traf_size(count: int) -> int:
    return 8 + 16 + 20 + (12 + 8 + 16 * count)


def _traf(track: Track, packets: Sequence[MediaPacket], data: list[bytes], offset: int) -> bytes:
    scale = track.timescale
    decode = [round(p.decode_time * scale) for p in packets]
    entries = []
    for index, packet in enumerate(packets):
        if index + 1 < len(packets):
            duration = decode[index + 1] - decode[index]
        else:
            duration = round(packet.duration * packet.time_base * scale)
        composition = round(packet.time * scale) - decode[index]
        flags = SYNC_SAMPLE if packet.keyframe else NON_SYNC_SAMPLE
        entries.append(struct.pack(">IIIi", max(0, duration), len(data[index]), flags, composition))
    tfhd = _full_box(b"tfhd", 0, TFHD_DEFAULT_BASE_IS_MOOF, struct.pack(">I", track.track_id))
    tfdt = _full_box(b"tfdt", 1, 0, struct.pack(">Q", max(0, decode[0])))
    trun = _full_box(
        b"trun", 1, TRUN_FLAGS, struct.pack(">Ii", len(packets), offset) + b"".join(entries)
    )
    return _box(b"traf", tfhd + tfdt + trun)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags) + payload)
