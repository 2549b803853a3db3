"""RFC 6381 ``CODECS`` strings (HLS ``EXT-X-STREAM-INF``) from the actual codec configuration.

H.264: ``avc1.PPCCLL`` from the SPS (profile_idc, constraint flags, level_idc), read from an
``avcC`` record (ISO/IEC 14496-15, what FLV and MP4 carry) or from Annex B extradata (what x264
writes with a global header). AAC: ``mp4a.40.N`` with N the AudioSpecificConfig object type
(ISO/IEC 14496-3 1.6.2.1).
"""

from __future__ import annotations

from vilokanam.packager.nal import remove_emulation_prevention, split_annexb

NAL_SPS = 7


class CodecConfigError(ValueError):
    """The codec configuration bytes are too short or not what they claim to be."""


def avc_codec_string(extradata: bytes) -> str:
    """``avc1.PPCCLL`` from H.264 extradata, either an ``avcC`` record or Annex B NAL units."""
    if len(extradata) >= 4 and extradata[0] == 1:
        profile, constraints, level = extradata[1], extradata[2], extradata[3]
    else:
        sps = _first_sps(extradata)
        if len(sps) < 4:
            raise CodecConfigError("H.264 extradata holds no complete SPS")
        profile, constraints, level = sps[1], sps[2], sps[3]
    if profile == 0:
        raise CodecConfigError("H.264 SPS with profile_idc 0")
    return f"avc1.{profile:02x}{constraints:02x}{level:02x}"


def avc_codec_string_from_sps(sps: bytes) -> str:
    """``avc1.PPCCLL`` from one SPS NAL unit (starting with its NAL header byte)."""
    if len(sps) < 4 or sps[0] & 0x1F != NAL_SPS:
        raise CodecConfigError("not an H.264 SPS NAL unit")
    payload = remove_emulation_prevention(sps[:8])
    return f"avc1.{payload[1]:02x}{payload[2]:02x}{payload[3]:02x}"


def aac_codec_string(audio_specific_config: bytes) -> str:
    """``mp4a.40.N`` from an AAC AudioSpecificConfig (2 = AAC-LC, 5 = HE-AAC, 29 = HE-AACv2)."""
    return f"mp4a.40.{aac_object_type(audio_specific_config)}"


def aac_object_type(audio_specific_config: bytes) -> int:
    """The audioObjectType of an AudioSpecificConfig, escape value 31 included."""
    if not audio_specific_config:
        raise CodecConfigError("empty AAC AudioSpecificConfig")
    object_type = audio_specific_config[0] >> 3
    if object_type == 31:
        if len(audio_specific_config) < 2:
            raise CodecConfigError("truncated AAC AudioSpecificConfig")
        object_type = 32 + (
            ((audio_specific_config[0] & 0x07) << 3) | (audio_specific_config[1] >> 5)
        )
    if object_type == 0:
        raise CodecConfigError("AAC AudioSpecificConfig with object type 0")
    return object_type


def join_codecs(*codecs: str | None) -> str:
    """The attribute value: the codecs present, comma separated."""
    return ",".join(codec for codec in codecs if codec)


def _first_sps(extradata: bytes) -> bytes:
    for unit in split_annexb(extradata):
        if unit and unit[0] & 0x1F == NAL_SPS:
            return remove_emulation_prevention(unit[:8])
    raise CodecConfigError("H.264 extradata is neither avcC nor Annex B with an SPS")
