"""Instrument files through :mod:`physmoe.data.instruments` and ``read_pattern``.

Real files, in ``tests/data/files/`` (from the source distribution of the PyPI package
``fairmat-readers-xrd`` 0.0.10, ``tests/data/``, https://github.com/FAIRmat-NFDI/readers-xrd,
Apache-2.0; the licence is ``tests/data/files/LICENSE-fairmat-readers-xrd.txt``, provenance and
checksums in ``tests/data/files/README.md``):

* ``XRD-918-16_10.xrdml`` -- XRDML 1.6, Empyrean powder scan, ``<intensities>``, start/end
  positions, common counting time 39.27 s, Cu Kα1 1.5405980 Å (unchanged).
* ``10_m84325_C_XRR_fast_processed.xrdml`` -- XRDML 2.1 reflectivity scan, ``<counts>`` with
  per-point ``beamAttenuationFactors`` (1 and 188), counting time 0.30 s (unchanged).
* ``TwoTheta_scan_scrambled.raw`` -- Bruker ``RAW4.00``, one Locked Coupled range, 8-byte data
  records, Kα1 1.5406 (unchanged).
* ``23-012-AG_2thomegascan_long_reduced.brml`` -- Bruker BRML (DIFFRAC.SUITE 6.5): the original
  ``experimentCollection.xml``, ``Experiment0/DataContainer.xml`` and
  ``Experiment0/RawData0.xml``, byte-identical, re-zipped without the archive's two 4 MB
  ``MeasurementContainer.xml``/``InstructionContainer.xml`` members (650 kB -> 29 kB).

No real Rigaku ``.ras`` nor ``RAW1.01`` file was found in a package, so those, and every
variant and broken file below, are written by the tests themselves to the published format
descriptions: ``.ras`` and ``.xrdml`` (XRDML schemas 1.0-2.x as shipped in xrdtools) as text,
``.brml`` as an in-memory zip mirroring the real file's structure, ``RAW1.01``/``RAW4.00`` byte by
byte to the layout in xylib's ``bruker_raw.cpp``. Oracles: the numbers written into (or read by
eye from) the files, and ``geddes`` (PyPI, MIT, an independent Rust reader) where installed.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from physmoe.data.instruments import (
    read_brml,
    read_bruker_raw,
    read_instrument_file,
    read_ras,
    read_xrdml,
)
from physmoe.data.readers import read_pattern
from tiny_models import save_tiny_model

FILES = Path(__file__).resolve().parent / "files"
POWDER_XRDML = FILES / "XRD-918-16_10.xrdml"
XRR_XRDML = FILES / "10_m84325_C_XRR_fast_processed.xrdml"
RAW4 = FILES / "TwoTheta_scan_scrambled.raw"
BRML = FILES / "23-012-AG_2thomegascan_long_reduced.brml"
LOGGER = "physmoe.data.instruments"


def geddes_read(path: Path):
    """The independent reader's (x, y), or skip where geddes is not installed."""
    geddes = pytest.importorskip("geddes")
    pattern = geddes.read(str(path))
    return np.asarray(pattern.x), np.asarray(pattern.y)


# ------------------------------------------------------------------------- real files


def test_real_xrdml_powder_scan(caplog):
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_xrdml(POWDER_XRDML)
    assert len(pattern) == 5027 and pattern.source == str(POWDER_XRDML)
    # <startPosition>4.00656514, <endPosition>69.99936587, spread evenly over the 5027 points.
    np.testing.assert_allclose(pattern.two_theta, np.linspace(4.00656514, 69.99936587, 5027))
    # <intensities> 1305 1310 1345 ... 170 189 171 over <commonCountingTime> 39.270 s.
    np.testing.assert_allclose(pattern.intensity[:3], np.array([1305, 1310, 1345]) / 39.27)
    np.testing.assert_allclose(pattern.intensity[-3:], np.array([170, 189, 171]) / 39.27)
    assert pattern.wavelength == 1.540598  # usedWavelength/kAlpha1
    assert "1.5406 A stated in the file (usedWavelength/kAlpha1)" in caplog.text
    x, y = geddes_read(POWDER_XRDML)
    np.testing.assert_allclose(pattern.two_theta, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pattern.intensity * 39.27, y, rtol=1e-12)


def test_real_xrdml_counts_are_multiplied_by_the_attenuation_factors():
    pattern = read_xrdml(XRR_XRDML)
    assert len(pattern) == 399 and pattern.wavelength == 1.540598
    np.testing.assert_allclose(pattern.two_theta[[0, -1]], [0.21, 4.19])
    # counts 146173 149637 | 831 923 with factors 1.00 1.00 | 188.00 188.00, over 0.30 s.
    np.testing.assert_allclose(
        pattern.intensity[10:14], np.array([146173, 149637, 831 * 188, 923 * 188]) / 0.3
    )
    x, y = geddes_read(XRR_XRDML)  # geddes: counts x attenuation, not divided by the time
    np.testing.assert_allclose(pattern.two_theta, x, atol=1e-9)
    np.testing.assert_allclose(pattern.intensity * 0.3, y, rtol=1e-12)


def test_real_bruker_raw4():
    pattern = read_bruker_raw(RAW4)
    assert len(pattern) == 7134
    # Range header: start 10.0, step 0.010520299896597862 (float64), Kα1 1.5406 as float32.
    assert pattern.two_theta[0] == 10.0
    np.testing.assert_allclose(np.diff(pattern.two_theta), 0.010520299896597862, rtol=1e-9)
    assert pattern.wavelength == pytest.approx(1.5406, abs=1e-7)
    # The scrambled intensities (float32, every other one of the 8-byte records).
    np.testing.assert_allclose(
        pattern.intensity[:4],
        [283.7691955566406, -164.5344696044922, -164.5344696044922, 3158.152099609375],
    )
    x, y = geddes_read(RAW4)
    np.testing.assert_allclose(pattern.two_theta, x, atol=1e-9)
    np.testing.assert_array_equal(pattern.intensity, y)


def test_real_brml():
    pattern = read_brml(BRML)
    assert len(pattern) == 2001 and pattern.wavelength == 1.5406  # WaveLengthAlpha1
    # <Datum>1,1,44,18.028,...,3</Datum> ... <Datum>1,1,48,20.028,...,2</Datum>: time 1 s,
    # 2θ in column 3, counts in column 8 (the DataViews say so).
    assert pattern.two_theta[0] == 44.0 and pattern.two_theta[-1] == 48.0
    np.testing.assert_array_equal(pattern.intensity[:5], [3, 1, 1, 2, 2])
    assert pattern.intensity[-1] == 2
    x, y = geddes_read(BRML)
    np.testing.assert_array_equal(pattern.two_theta, x)
    np.testing.assert_array_equal(pattern.intensity, y)


@pytest.mark.parametrize("path", [POWDER_XRDML, XRR_XRDML, RAW4, BRML], ids=lambda p: p.suffix)
def test_read_pattern_dispatches_on_the_suffix_in_any_case(tmp_path, path):
    direct = read_instrument_file(path)
    upper = tmp_path / (path.stem + path.suffix.upper())
    upper.write_bytes(path.read_bytes())
    for name in (path, upper):
        pattern = read_pattern(name)
        np.testing.assert_array_equal(pattern.two_theta, direct.two_theta)
        np.testing.assert_array_equal(pattern.intensity, direct.intensity)
        assert pattern.wavelength == direct.wavelength


@pytest.mark.parametrize("path", [POWDER_XRDML, RAW4, BRML], ids=lambda p: p.suffix)
def test_the_callers_wavelength_wins_without_a_warning(path, caplog):
    with caplog.at_level("WARNING", logger=LOGGER):
        assert read_pattern(path, wavelength=0.7093).wavelength == 0.7093
    assert caplog.text == ""
    with pytest.raises(ValueError, match="positive number of Angstrom"):
        read_pattern(path, wavelength=-1.0)


def test_readers_write_nothing(tmp_path, monkeypatch):
    for path in (POWDER_XRDML, XRR_XRDML, RAW4, BRML):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "scan.ras").write_bytes(ras_file())
    (tmp_path / "scan.raw").write_bytes(raw_v3([(10.0, 0.02, [1.0, 2.0, 3.0])]))
    monkeypatch.chdir(tmp_path)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}
    for path in list(before):
        read_pattern(path)
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")} == before


# ------------------------------------------------------------------ XRDML written here

XRDML_NAMESPACES = {
    "1.0": "http://www.xrdml.com/XRDMeasurement/1.0",
    "1.5": "http://www.xrdml.com/XRDMeasurement/1.5",
    "2.1": "http://www.xrdml.com/XRDMeasurement/2.1",
    "none": None,
}
KALPHA = (
    '<usedWavelength intended="K-Alpha 1"><kAlpha1 unit="Angstrom">1.5405980</kAlpha1>'
    '<kAlpha2 unit="Angstrom">1.5444260</kAlpha2><kBeta unit="Angstrom">1.3922500</kBeta>'
    "<ratioKAlpha2KAlpha1>0.5000</ratioKAlpha2KAlpha1></usedWavelength>"
)
TUBE = (
    '<incidentBeamPath><xRayTube name="tube"><anodeMaterial>{}</anodeMaterial></xRayTube>'
    "</incidentBeamPath>"
)


def start_end(start: float, end: float) -> str:
    return (
        f'<positions axis="2Theta" unit="deg"><startPosition>{start}</startPosition>'
        f"<endPosition>{end}</endPosition></positions>"
        '<positions axis="Omega" unit="deg"><startPosition>5</startPosition>'
        "<endPosition>40</endPosition></positions>"
    )


def xrdml(
    points: str,
    *,
    namespace: str | None = XRDML_NAMESPACES["2.1"],
    used: str = KALPHA,
    anode: str = "Cu",
    scans: int = 1,
) -> bytes:
    """An XRDML document with ``scans`` copies of one scan of ``points`` (dataPoints XML)."""
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    scan = (
        f'<scan appendNumber="0" mode="Continuous" scanAxis="Gonio" status="Completed">'
        f"<dataPoints>{points}</dataPoints></scan>"
    )
    tube = TUBE.format(anode) if anode else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><xrdMeasurements{xmlns} status="Completed">'
        f'<xrdMeasurement measurementType="Scan">{used}{tube}{scan * scans}</xrdMeasurement>'
        "</xrdMeasurements>"
    ).encode()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("version", list(XRDML_NAMESPACES))
def test_xrdml_schema_versions_and_counts_per_second(tmp_path, version):
    points = (
        start_end(10, 50) + "<beamAttenuationFactors>1 1 10 1 1</beamAttenuationFactors>"
        '<commonCountingTime unit="seconds">2.0</commonCountingTime>'
        '<counts unit="counts">4 8 12 16 20</counts>'
    )
    pattern = read_xrdml(
        write(tmp_path, "scan.xrdml", xrdml(points, namespace=XRDML_NAMESPACES[version]))
    )
    np.testing.assert_array_equal(pattern.two_theta, [10, 20, 30, 40, 50])
    np.testing.assert_array_equal(pattern.intensity, [2, 4, 60, 8, 10])
    assert pattern.wavelength == 1.540598


def test_xrdml_list_positions_per_point_times_and_descending_scans(tmp_path):
    points = (
        '<positions axis="2Theta" unit="deg"><listPositions>30 20.5 10</listPositions>'
        "</positions><commonBeamAttenuationFactor>3</commonBeamAttenuationFactor>"
        '<countingTimes unit="seconds">1 2 4</countingTimes>'
        '<counts unit="counts">10 20 40</counts>'
    )
    pattern = read_xrdml(write(tmp_path, "scan.xrdml", xrdml(points)))
    np.testing.assert_array_equal(pattern.two_theta, [10, 20.5, 30])  # made ascending
    np.testing.assert_array_equal(pattern.intensity, [30, 30, 30])


@pytest.mark.parametrize(
    ("unit", "expected"), [("counts", [100, 200, 300]), ("counts/s", [50, 100, 150])]
)
def test_xrdml_intensities_are_not_multiplied_again(tmp_path, unit, expected):
    """``<intensities>`` already include the attenuation; a rate is not divided again."""
    points = (
        start_end(10, 12) + "<beamAttenuationFactors>5 5 5</beamAttenuationFactors>"
        '<commonCountingTime unit="seconds">0.5</commonCountingTime>'
        f'<intensities unit="{unit}">50 100 150</intensities>'
    )
    pattern = read_xrdml(write(tmp_path, "scan.xrdml", xrdml(points)))
    np.testing.assert_array_equal(pattern.intensity, expected)


@pytest.mark.parametrize(
    ("used", "anode", "expected"),
    [
        (KALPHA.replace("K-Alpha 1", "K-Beta"), "Cu", 1.39225),  # the intended line is K-beta
        ("", "Mo", 0.7093),  # no usedWavelength: the anode's K-alpha1
        ("", "", None),  # nothing stated: unknown, never assumed
    ],
)
def test_xrdml_wavelength_sources(tmp_path, used, anode, expected):
    points = start_end(10, 20) + '<counts unit="counts">1 2</counts>'
    path = write(tmp_path, "scan.xrdml", xrdml(points, used=used, anode=anode))
    assert read_xrdml(path).wavelength == expected


def test_xrdml_takes_the_first_of_several_scans_and_says_so(tmp_path, caplog):
    points = start_end(10, 20) + '<counts unit="counts">1 2</counts>'
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_xrdml(write(tmp_path, "scan.xrdml", xrdml(points, scans=3)))
    assert len(pattern) == 2
    assert "3 scans; reading the first, ignoring the other 2" in caplog.text


# ------------------------------------------------------------------- BRML written here

BRML_VIEWS = """<DataViews>
  <RawDataView xsi:type="FixedRawDataView" Start="0" Length="1" LogicName="MeasuredTime"/>
  <RawDataView xsi:type="FixedRawDataView" Start="1" Length="1" LogicName="AbsorptionFactor"/>
  <RawDataView xsi:type="VaryingRawDataView" Start="2" Length="2">
    <Varying LogicName="ScanAxes"><FieldDefinitions FieldName="Theta" AxisId="Theta"/>
      <FieldDefinitions FieldName="TwoTheta" AxisId="TwoTheta"/></Varying>
  </RawDataView>
  <RawDataView xsi:type="RecordedRawDataView" Start="4" Length="1">
    <Recording LogicName="ScanCounter1"><Unit Base="Counts"/></Recording>
  </RawDataView>
</DataViews>"""
BRML_TUBE = (
    '<FixedInformation><Instrument><Tube><WaveLengthAlpha1 Unit="Å" Value="1.78897"/>'
    '<WaveLengthAlpha2 Unit="Å" Value="1.79285"/><TubeMaterial>Co</TubeMaterial></Tube>'
    "</Instrument></FixedInformation>"
)


def raw_data_xml(
    rows: list[str],
    *,
    views: str = BRML_VIEWS,
    fixed: str = BRML_TUBE,
    axes: tuple[str, ...] = ("TwoTheta", "Theta"),
    steps: int | None = None,
) -> str:
    """A ``RawData0.xml`` shaped like the real one: rows, sub-scan, axes, views, instrument."""
    axis_xml = "".join(
        f'<ScanAxisInfo AxisId="{a}"><Start>10</Start><Stop>10.06</Stop>'
        f"<Increment>0.02</Increment></ScanAxisInfo>"
        for a in axes
    )
    measured = len(rows) if steps is None else steps
    return (
        '<?xml version="1.0"?><RawData xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<DataRoutes><DataRoute RouteFlag="Measured"><ScanInformation ScanName="Coupled">'
        f"<MeasurementPoints>{len(rows)}</MeasurementPoints><ScanAxes>{axis_xml}</ScanAxes>"
        f'</ScanInformation><SubScans><SubScanInfo Steps="{measured}" '
        f'MeasuredSteps="{measured}" StartStepNo="0"/></SubScans>'
        + "".join(f"<Datum>{row}</Datum>" for row in rows)
        + f"{views}</DataRoute></DataRoutes>{fixed}</RawData>"
    )


BRML_ROWS = ["2,1,5,10,8", "2,1,5.01,10.02,20", "2,1,5.02,10.04,6"]  # time, -, θ, 2θ, counts


def brml(members: dict[str, str | bytes], *, listed: list[str] | None = None) -> bytes:
    """A zip of ``members`` and a ``DataContainer.xml`` listing ``listed`` raw data files
    (default: the ``RawData`` members in the order given)."""
    if listed is None:
        listed = [name for name in members if "RawData" in name]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        names = "".join(f"<string>{name}</string>" for name in listed)
        archive.writestr(
            "Experiment0/DataContainer.xml",
            '<?xml version="1.0"?><DataContainer>'
            f"<RawDataReferenceList>{names}</RawDataReferenceList></DataContainer>",
        )
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_brml_columns_from_the_data_views(tmp_path):
    path = write(tmp_path, "scan.brml", brml({"Experiment0/RawData0.xml": raw_data_xml(BRML_ROWS)}))
    pattern = read_brml(path)
    np.testing.assert_array_equal(pattern.two_theta, [10, 10.02, 10.04])  # column 4, not 3
    np.testing.assert_array_equal(pattern.intensity, [4, 10, 3])  # counts / 2 s
    assert pattern.wavelength == 1.78897


def test_brml_without_data_views_uses_the_scan_axis_and_the_last_column(tmp_path):
    rows = ["1,1,99,99,8", "1,1,99,99,20", "1,1,99,99,6", "1,1,99,99,7"]
    xml = raw_data_xml(rows, views="", fixed="<TubeMaterial>Cu</TubeMaterial>")
    pattern = read_brml(write(tmp_path, "scan.brml", brml({"Experiment0/RawData0.xml": xml})))
    np.testing.assert_allclose(pattern.two_theta, [10, 10.02, 10.04, 10.06])  # Start + i * Inc
    np.testing.assert_array_equal(pattern.intensity, [8, 20, 6, 7])
    assert pattern.wavelength == 1.54056  # the Cu anode's K-alpha1


def test_brml_reads_the_first_listed_scan_and_the_container_wavelength(tmp_path, caplog):
    second = raw_data_xml(["1,1,1,30,1", "1,1,1,31,1"], fixed="")
    first = raw_data_xml(BRML_ROWS, fixed="")
    container = (
        '<MeasurementContainer><Tube><WaveLengthAlpha1 Value="0.70930"/></Tube>'
        "</MeasurementContainer>"
    )
    data = brml(
        {
            "Experiment0/RawData1.xml": second,
            "Experiment0/RawData0.xml": first,
            "Experiment0/MeasurementContainer.xml": container,
        },
        listed=["Experiment0/RawData0.xml", "Experiment0/RawData1.xml"],
    )
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_brml(write(tmp_path, "scan.brml", data))
    np.testing.assert_array_equal(pattern.two_theta, [10, 10.02, 10.04])
    assert pattern.wavelength == 0.7093
    assert "2 RawData files (scans); reading the first, ignoring the other 1" in caplog.text
    assert "MeasurementContainer.xml: WaveLengthAlpha1" in caplog.text


# -------------------------------------------------------------- Bruker RAW written here


def raw_v3(ranges: list[tuple], *, alpha1: float = 1.54056, anode: bytes = b"Cu") -> bytes:
    """A ``RAW1.01`` file: ranges of ``(start, step, counts[, varying, supplementary])``: each
    data record is the float32 count and ``varying`` float64 per-point values (the bit mask at
    +248 says which; the record size at +252 is 4 + 8 per bit), after a supplementary header of
    ``supplementary`` bytes."""
    header = bytearray(712)
    header[:7] = b"RAW1.01"
    struct.pack_into("<2I", header, 8, 1, len(ranges))
    header[608 : 608 + len(anode)] = anode
    struct.pack_into("<5d", header, 616, 1.54184, alpha1, 1.54439, 1.39222, 0.5)
    out = bytes(header)
    for start, step, counts, *options in ranges:
        varying, extra = options or (0, 0)
        head = bytearray(304)
        struct.pack_into("<2I2d", head, 0, 304, len(counts), start / 2, start)
        struct.pack_into("<d", head, 176, step)
        struct.pack_into("<d", head, 240, 1.5)
        struct.pack_into("<3I", head, 248, (1 << varying) - 1, 4 + 8 * varying, extra)
        fields = [("counts", "<f4")] + [(f"value{i}", "<f8") for i in range(varying)]
        records = np.zeros(len(counts), dtype=np.dtype(fields))  # packed: 4 + 8 * varying bytes
        records["counts"] = counts
        for name, _ in fields[1:]:
            records[name] = start + step * np.arange(len(counts))
        out += bytes(head) + b"\xee" * extra + records.tobytes()
    return out


def blob(length: int, fields: dict[int, bytes]) -> bytes:
    """``length`` zero bytes with ``fields`` placed at their offsets."""
    data = bytearray(length)
    for offset, value in fields.items():
        data[offset : offset + len(value)] = value
    return bytes(data)


def segment(kind: int, length: int, fields: dict[int, bytes] | None = None) -> bytes:
    """A RAW4.00 segment: type and length, then ``fields``."""
    return blob(length, {0: struct.pack("<2I", kind, length), **(fields or {})})


def raw_v4(ranges: list[tuple], *, alpha1: float = 1.78897, anode: bytes = b"Co") -> bytes:
    """A ``RAW4.00`` file: ranges of ``(scan type, start, step, counts, record size, drives)``."""
    head = bytearray(61)
    head[:7], head[12:22], head[24:32] = b"RAW4.00", b"01/02/2024", b"12:00:00"
    out = bytes(head) + segment(10, 48, {12: b"SAMPLEID", 36: b"quartz"})
    out += segment(30, 136, {72: struct.pack("<5d", 1.79, alpha1, 1.79285, 1.62, 0.5), 116: anode})
    for scan_type, start, step, counts, record, drives in ranges:
        drive_bytes = b"".join(
            segment(50, 92, {12: name, 56: struct.pack("<d", value)})
            for name, value in drives.items()
        )
        range_head = blob(
            160,
            {
                0: struct.pack("<3I", 0, len(counts), len(counts)),
                32: scan_type,
                72: struct.pack("<2dI", start, step, len(counts)),
                112: struct.pack("<d", alpha1),
                136: struct.pack("<2I", record, len(drive_bytes)),
            },
        )
        records = np.full((len(counts), record // 4), 3.0, dtype="<f4")
        records[:, 0] = counts
        out += range_head + drive_bytes + records.tobytes()
    return out


def test_raw_v3_strided_records_and_supplementary_headers(tmp_path, caplog):
    data = raw_v3([(20.0, 0.05, [5, 6, 7, 8], 1, 40), (60.0, 0.1, [1, 2], 2, 0)])
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_bruker_raw(write(tmp_path, "scan.raw", data))
    np.testing.assert_allclose(pattern.two_theta, [20, 20.05, 20.1, 20.15])
    np.testing.assert_array_equal(pattern.intensity, [5, 6, 7, 8])
    assert pattern.wavelength == 1.54056
    assert "2 ranges; reading the first 2theta range" in caplog.text


def test_raw_v3_without_a_wavelength_uses_the_range_then_the_anode(tmp_path):
    path = write(tmp_path, "scan.raw", raw_v3([(20.0, 0.05, [5, 6])], alpha1=0.0))
    assert read_bruker_raw(path).wavelength == 1.5  # the range's used wavelength


def test_raw_v4_skips_ranges_that_are_no_2theta_scan(tmp_path, caplog):
    rocking = (b"Rocking Curve", 10.0, 0.01, [1, 2, 3], 4, {b"2Theta": 40.0, b"Theta": 10.0})
    coupled = (b"Locked Coupled", 30.0, 0.5, [9, 8, 7], 8, {b"2Theta": 30.0, b"Theta": 15.0})
    detector = (b"Detector Scan", 35.0, 0.5, [4, 4], 4, {b"2Theta": 35.0})
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_bruker_raw(write(tmp_path, "scan.raw", raw_v4([rocking, coupled, detector])))
    np.testing.assert_array_equal(pattern.two_theta, [30, 30.5, 31])
    np.testing.assert_array_equal(pattern.intensity, [9, 8, 7])
    assert pattern.wavelength == 1.78897
    assert "3 ranges; reading the first 2theta range (Locked Coupled)" in caplog.text


def test_raw_v4_unknown_scan_type_with_a_2theta_drive_at_the_start(tmp_path):
    scan = (b"Custom", 12.0, 0.25, [1, 2, 3], 4, {b"2Theta": 12.0})
    pattern = read_bruker_raw(write(tmp_path, "scan.raw", raw_v4([scan])))
    np.testing.assert_array_equal(pattern.two_theta, [12, 12.25, 12.5])


# ----------------------------------------------------------------------- RAS written here


def ras_file(
    *,
    rows: str = "10.00 100 1.0\r\n10.02 200 2.5\r\n10.04 50 1.0\r\n",
    header: dict[str, str] | None = None,
    scans: int = 1,
    comment: bytes = "アルミナ 標準試料".encode("cp932"),
) -> bytes:
    """A Rigaku RAS file: CRLF lines, a Shift-JIS (cp932) comment, ``scans`` copies."""
    values = {
        "MEAS_SCAN_AXIS_X": "TwoThetaTheta",
        "MEAS_SCAN_UNIT_X": "deg",
        "MEAS_SCAN_START": "10.0000",
        "MEAS_SCAN_STEP": "0.0200",
        "MEAS_DATA_COUNT": "3",
        "HW_XG_TARGET_NAME": "Cu",
        "HW_XG_WAVE_LENGTH_ALPHA1": "1.540593",
        "HW_XG_WAVE_LENGTH_ALPHA2": "1.544414",
        "HW_XG_WAVE_LENGTH_UNIT": "Angstrom",
    }
    values.update(header or {})
    lines = b"".join(
        f'*{key} "{value}"\r\n'.encode() for key, value in values.items() if value is not None
    )
    block = (
        b'*RAS_HEADER_START\r\n*FILE_COMMENT "'
        + comment
        + b'"\r\n'
        + lines
        + b"*RAS_HEADER_END\r\n*RAS_INT_START\r\n"
        + rows.encode()
        + b"*RAS_INT_END\r\n"
    )
    return b"*RAS_DATA_START\r\n" + block * scans + b"*RAS_DATA_END\r\n"


def test_ras_with_shift_jis_comments_and_attenuation_factors(tmp_path, caplog):
    with caplog.at_level("WARNING", logger=LOGGER):
        pattern = read_ras(write(tmp_path, "scan.ras", ras_file(scans=2)))
    np.testing.assert_array_equal(pattern.two_theta, [10, 10.02, 10.04])
    np.testing.assert_array_equal(pattern.intensity, [100, 500, 50])  # counts x attenuation
    assert pattern.wavelength == 1.540593
    assert "HW_XG_WAVE_LENGTH_ALPHA1" in caplog.text
    assert "2 scans; reading the first, ignoring the other 1" in caplog.text


@pytest.mark.parametrize(
    ("header", "comment", "expected"),
    [
        ({"HW_XG_WAVE_LENGTH_ALPHA1": None, "HW_XG_TARGET_NAME": "Mo"}, b"caf\xe9", 0.7093),
        ({"HW_XG_WAVE_LENGTH_ALPHA1": "0.1540593", "HW_XG_WAVE_LENGTH_UNIT": "nm"}, b"", 1.540593),
        ({"HW_XG_WAVE_LENGTH_ALPHA1": None, "HW_XG_TARGET_NAME": None}, b"\xff\xfe", None),
    ],
)
def test_ras_wavelength_sources_and_other_encodings(tmp_path, header, comment, expected):
    rows = "10.00 100\n10.02 200\n10.04 50\n"  # two columns, LF
    path = write(tmp_path, "scan.ras", ras_file(rows=rows, header=header, comment=comment))
    pattern = read_ras(path)
    if expected is None:
        assert pattern.wavelength is None
    else:
        assert pattern.wavelength == pytest.approx(expected)
    np.testing.assert_array_equal(pattern.intensity, [100, 200, 50])


@pytest.mark.parametrize(
    ("name", "data", "divisor"),
    [
        ("v3.raw", raw_v3([(20.0, 0.05, [5, 6, 7, 8], 1, 40), (60.0, 0.1, [1, 2])]), 1),
        ("v4.raw", raw_v4([(b"Locked Coupled", 30.0, 0.5, [9, 8, 7], 8, {b"2Theta": 30.0})]), 1),
        ("scan.ras", ras_file(rows="10.00 100 1\r\n10.02 200 1\r\n10.04 50 1\r\n"), 1),
        (
            "scan.xrdml",
            xrdml(
                start_end(10, 50) + "<commonCountingTime>2</commonCountingTime>"
                '<counts unit="counts">4 8 12 16 20</counts>'
            ),
            2,
        ),
        ("scan.brml", brml({"Experiment0/RawData0.xml": raw_data_xml(BRML_ROWS)}), 2),
    ],
)
def test_files_written_here_agree_with_an_independent_reader(tmp_path, name, data, divisor):
    """The files written to the format descriptions read the same in geddes (which returns
    counts, not counts per second)."""
    path = write(tmp_path, name, data)
    pattern = read_pattern(path)
    x, y = geddes_read(path)
    np.testing.assert_allclose(pattern.two_theta, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pattern.intensity * divisor, y, rtol=1e-12)


# -------------------------------------------------------------------------- bad files


def corrupt_member() -> bytes:
    """A stored (uncompressed) member whose bytes no longer match its CRC."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("Experiment0/RawData0.xml", raw_data_xml(BRML_ROWS))
    return buffer.getvalue().replace(b"10.02,20", b"10.02,21", 1)


GOOD_POINTS = start_end(10, 20) + '<counts unit="counts">1 2</counts>'
GOOD_RAW3 = raw_v3([(20.0, 0.05, [5, 6, 7, 8])])
GOOD_RAW4 = raw_v4([(b"Locked Coupled", 30.0, 0.5, [9, 8, 7], 4, {b"2Theta": 30.0})])
RAW4_SEGMENT_END = 61 + 48 + 136

BAD_FILES = [
    # XRDML
    ("bad.xrdml", b"<xrdMeasurements><xrdMeasurement>", "not well-formed XML"),
    ("bad.xrdml", b"<html><body/></html>", "not an XRDML file: its root element is <html>"),
    ("bad.xrdml", xrdml(GOOD_POINTS, scans=0), r"no <xrdMeasurement>/<scan>"),
    ("bad.xrdml", xrdml('<counts unit="counts">1 2</counts>'), "no 2theta axis"),
    (
        "bad.xrdml",
        xrdml(
            '<positions axis="2Theta"><commonPosition>30</commonPosition>'
            '</positions><counts unit="counts">1 2</counts>'
        ),
        "2Theta is fixed at 30",
    ),
    (
        "bad.xrdml",
        xrdml(
            '<positions axis="2Theta"><listPositions>1 2 3</listPositions>'
            '</positions><counts unit="counts">1 2</counts>'
        ),
        "listPositions> has 3 values for 2 intensities",
    ),
    (
        "bad.xrdml",
        xrdml(
            start_end(10, 20) + "<countingTimes>1 1 1</countingTimes>"
            '<counts unit="counts">1 2</counts>'
        ),
        "countingTimes> has 3 values for 2 intensities",
    ),
    (
        "bad.xrdml",
        xrdml(
            start_end(10, 20) + "<commonCountingTime>0</commonCountingTime>"
            '<counts unit="counts">1 2</counts>'
        ),
        "non-positive counting time 0",
    ),
    (
        "bad.xrdml",
        xrdml(start_end(10, 20) + '<counts unit="counts">1 abc</counts>'),
        "<counts> holds 'abc', not a number",
    ),
    (
        "bad.xrdml",
        xrdml(start_end(10, 20) + '<counts unit="counts">1 NaN</counts>'),
        "non-finite intensity nan at point 2 of 2",
    ),
    ("bad.xrdml", xrdml(start_end(10, 20)), "neither <counts> nor <intensities>"),
    (
        "bad.xrdml",
        xrdml(
            '<positions axis="2Theta" unit="rad"><startPosition>0.1</startPosition>'
            "<endPosition>0.2</endPosition></positions><counts>1 2</counts>"
        ),
        "in 'rad', not degrees",
    ),
    # BRML
    ("bad.brml", b"<RawData/>", "not a readable zip archive"),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(BRML_ROWS)})[:200],
        "not a readable zip archive",
    ),
    (
        "bad.brml",
        brml({"readme.txt": "hello"}),
        r"no Experiment\*/RawData\*.xml in the archive \(members: .*readme.txt\)",
    ),
    ("bad.brml", corrupt_member(), "cannot read member Experiment0/RawData0.xml"),
    ("bad.brml", brml({"Experiment0/RawData0.xml": "<RawData><Datum>"}), "not well-formed XML"),
    ("bad.brml", brml({"Experiment0/RawData0.xml": raw_data_xml([])}), r"no <Datum> rows"),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(["2,1,5,10,8", "2,1,5"])}),
        "row 2 has 3 values, row 1 has 5",
    ),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(["2,1,5,10,8", "2,x,5,11,1"])}),
        "row 2 .* is not numbers",
    ),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(BRML_ROWS, steps=5)}),
        "3 <Datum> rows but the scan announces 5 measured steps",
    ),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(BRML_ROWS, views="", axes=("Theta",))}),
        r"no 2theta axis: .* \(scan axes: Theta\)",
    ),
    (
        "bad.brml",
        brml({"Experiment0/RawData0.xml": raw_data_xml(["2,1,5,10,8", "2,1,5,11,inf"])}),
        "non-finite intensity inf at point 2",
    ),
    # Bruker RAW
    ("bad.raw", GOOD_RAW3[:300], r"truncated: the RAW1.01 file header at byte 0 needs 712"),
    ("bad.raw", GOOD_RAW3[:-3], "truncated: range 1 of 1 announces 4 points of 4 bytes"),
    (
        "bad.raw",
        GOOD_RAW3[:712] + struct.pack("<2I", 100, 4) + bytes(300),
        "range 1 of 1 header is 100 bytes, less than the 260",
    ),
    ("bad.raw", GOOD_RAW4[: RAW4_SEGMENT_END - 10], "truncated: segment of type 30 at byte 109"),
    ("bad.raw", GOOD_RAW4[:RAW4_SEGMENT_END], "truncated: .* no range"),
    ("bad.raw", GOOD_RAW4[: RAW4_SEGMENT_END + 100], "truncated: range 1 header at byte 245"),
    ("bad.raw", GOOD_RAW4[:61] + struct.pack("<2I", 10, 0), "length 0 < 8: corrupt"),
    (
        "bad.raw",
        raw_v4([(b"Rocking Curve", 10.0, 0.01, [1, 2], 4, {b"2Theta": 40.0})]),
        "no 2theta range \\(ranges: 'Rocking Curve'\\)",
    ),
    ("bad.raw", raw_v3([(20.0, 0.05, [5, np.nan])]), "non-finite intensity nan at point 2"),
    ("bad.raw", raw_v3([(20.0, 0.0, [5, 6])]), r"2theta is constant \(20 deg\)"),
    ("bad.raw", b"RAW2" + bytes(500), r"version 2 \(DIFFRAC-AT\) is not supported"),
    ("bad.raw", b"RAW " + bytes(500), r"version 1 \(DIFFRAC-AT\) is not supported"),
    ("bad.raw", b"# GSAS raw text\n", "is not a Bruker RAW file: it starts with"),
    # RAS
    ("bad.ras", b"10 1\n11 2\n", "is not a Rigaku RAS file"),
    ("bad.ras", ras_file().split(b"*RAS_INT_END")[0], "no \\*RAS_INT_END: truncated file"),
    ("bad.ras", ras_file(rows="10 1 1\n10.02 2\n10.04 3 1\n"), r"bad.ras:\d+: expected 2 or 3"),
    ("bad.ras", ras_file(rows="10 1 1 1\n10.02 2 1 1\n10.04 3 1 1\n"), "expected 2 or 3 columns"),
    (
        "bad.ras",
        ras_file(rows="10 1 1\n10.02 x 1\n10.04 3 1\n"),
        r"bad.ras:\d+: cannot parse '10.02 x 1' as numbers",
    ),
    ("bad.ras", ras_file(rows="10 1 1\n10.02 2 1\n"), "2 data rows but MEAS_DATA_COUNT says 3"),
    ("bad.ras", ras_file(header={"MEAS_SCAN_AXIS_X": "Omega"}), "axis is 'Omega'"),
    ("bad.ras", ras_file(header={"MEAS_SCAN_UNIT_X": "rad"}), "in 'rad'"),
    ("bad.ras", ras_file(rows="10 1 1\n10.02 nan 1\n10.04 3 1\n"), "non-finite intensity nan"),
    ("bad.ras", ras_file(rows="10 1 1\n10 2 1\n10.04 3 1\n"), "not strictly monotonic"),
]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    BAD_FILES,
    ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_FILES)],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, name, data, message):
    path = write(tmp_path, name, data)
    with pytest.raises(ValueError, match=message) as raised:
        read_pattern(path)
    assert type(raised.value) is ValueError and str(path) in str(raised.value)
    assert raised.value.__cause__ is None  # no XML, zip or struct traceback attached


def test_missing_instrument_file(tmp_path):
    for name in ("a.xrdml", "a.brml", "a.raw", "a.ras"):
        with pytest.raises(FileNotFoundError, match="pattern file not found"):
            read_instrument_file(tmp_path / name)


# ----------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_an_xrdml_file_goes_through_predict_file_and_the_cli(saved_model, capsys):
    from physmoe.cli import main
    from physmoe.inference import SpaceGroupPredictor

    predictor = SpaceGroupPredictor.from_pretrained(saved_model, autocast_dtype=torch.float32)
    result = predictor.predict_file(POWDER_XRDML, top_k=4)
    pattern = read_xrdml(POWDER_XRDML)
    direct = predictor.predict(pattern.two_theta, pattern.intensity, wavelength=1.540598, top_k=4)[
        0
    ]
    assert [c.space_group for c in result.candidates] == [c.space_group for c in direct.candidates]
    np.testing.assert_allclose(
        [c.probability for c in result.candidates],
        [c.probability for c in direct.candidates],
        rtol=1e-5,
    )
    assert result.source == POWDER_XRDML.name and result.wavelength == 1.540598
    assert "stated in the file" in result.wavelength_note
    assert main(["predict", str(saved_model), str(POWDER_XRDML), str(RAW4), "--json"]) == 0
    xrdml_record, raw_record = json.loads(capsys.readouterr().out)
    assert xrdml_record["wavelength"] == 1.540598
    assert raw_record["wavelength"] == pytest.approx(1.5406, abs=1e-6)
    assert "stated in the file" in raw_record["wavelength_note"]


def test_readers_are_exported_from_physmoe_data():
    import physmoe.data
    from physmoe.data import instruments

    for name in instruments.__all__:
        assert (
            getattr(physmoe.data, name) is getattr(instruments, name)
            and name in physmoe.data.__all__
        )
