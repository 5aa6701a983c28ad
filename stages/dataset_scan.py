"""Read a dataset folder the way diffusion-pipe's metadata pass does, from file headers only.

``stages/step_count.py`` turns these measurements into a step count; the ``tiny`` trainer uses
the same listing so that both see the same files. Which files count, which are videos and how
a size is read follow ``utils/dataset.py`` (``_get_ungrouped_metadata``, ``_metadata_map_fn``)
at the pinned commit. Only headers are read: Pillow's ``Image.open`` parses the size without
decoding, and PyAV reads a video's size, frame rate and frame count from its streams. MKV
(which diffusion-pipe decodes to count frames) and containers whose header has no frame count
(WebM) have their packets counted instead, which reads the file but decodes nothing.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from stages.step_count import MediaFile

# utils/dataset.py: suffixes never treated as media (compared case-sensitively there too).
NON_MEDIA_SUFFIXES = frozenset({".txt", ".npz", ".json", ".parquet", ".bak", ".db"})
# utils/common.py VIDEO_EXTENSIONS: imageio's ``config.video_extensions``, each suffix as
# written there and in upper case. A suffix in any other case (".Mp4") is opened as an image.
_IMAGEIO_VIDEO_LIST = """
.264 .265 .3g2 .3gp .a64 .A64 .adp .amr .amv .asf .avc .avi .avr .avs .avs2 .avs3 .bmv .cavs
.cdg .cdxl .cgi .chk .cif .cpk .dat .dav .dif .dnxhd .dnxhr .drc .dv .dvd .f4v .flm .flv .gsm
.gxf .h261 .h263 .h264 .h265 .h26l .hevc .idf .ifv .imx .ipu .ism .isma .ismv .ivf .ivr .j2k
.kux .lvf .m1v .m2t .m2ts .m2v .m4a .m4b .m4v .mj2 .mjpeg .mjpg .mk3d .mka .mks .mkv .mods
.moflex .mov .mp4 .mpc .mpd .mpeg .mpg .mpo .mts .mvi .mxf .mxg .nut .obu .ogg .ogv .psp .qcif
.rcv .rgb .rm .roq .sdr2 .ser .sga .svag .svs .ts .ty .ty+ .v .v210 .vb .vc1 .vc2 .viv .vob
.webm .wmv .wtv .xl .xmv .y4m .yop .yuv .yuv10
"""
VIDEO_SUFFIXES = frozenset(
    form for suffix in _IMAGEIO_VIDEO_LIST.split() for form in (suffix, suffix.upper())
)
_CAPTION_SUFFIX = ".txt"


def media_paths(folder: Path) -> list[Path]:
    """The files diffusion-pipe tries to open, in its (sorted) order."""
    return sorted(
        path
        for path in folder.glob("*")
        if path.is_file() and path.suffix not in NON_MEDIA_SUFFIXES
    )


def is_video(path: Path) -> bool:
    return path.suffix in VIDEO_SUFFIXES


def measure_directory(folder: Path) -> list[MediaFile]:
    """Every file of ``folder`` that diffusion-pipe would keep, measured; [] when it is absent."""
    if not folder.is_dir():
        return []
    found = (measure_file(path) for path in media_paths(folder))
    return [file for file in found if file is not None]


def measure_file(path: Path) -> MediaFile | None:
    """The file's size (and a video's frames and fps); None when it does not open at all,
    which is when diffusion-pipe skips it too ("could not be opened")."""
    captioned = path.with_suffix(_CAPTION_SUFFIX).is_file()
    if path.suffix == ".tar":  # diffusion-pipe reads tar members; loraq never writes tars
        return MediaFile(path.parent, path.name, None, None, captioned=captioned)
    if is_video(path):
        return _measure_video(path, captioned)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # Pillow raises many types for "not an image"; diffusion-pipe skips them all
        return None
    return MediaFile(path.parent, path.name, width, height, captioned=captioned)


def _measure_video(path: Path, captioned: bool) -> MediaFile | None:
    try:
        import av  # FFmpeg's libraries: loaded only for datasets with videos
    except ImportError:  # no PyAV here: keep the file, unmeasured (the estimate falls back)
        return MediaFile(path.parent, path.name, None, None, video=True, captioned=captioned)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return None
            stream = container.streams.video[0]
            frames = int(stream.frames or 0)
            if frames <= 0 or path.suffix.lower() == ".mkv":
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            rate = stream.average_rate
            return MediaFile(
                path.parent,
                path.name,
                int(stream.width),
                int(stream.height),
                video=True,
                frames=frames,
                fps=float(rate) if rate else None,
                captioned=captioned,
            )
    except Exception:  # FFmpeg's errors for a broken file: diffusion-pipe skips it too
        return None
