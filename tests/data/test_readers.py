"""Readers on small files the tests write themselves: text patterns, CIF, a SimXRD-4M-like ASE
database and the reference implementation's pickled .npy dicts."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from physmoe.data.readers import Pattern, read_cif, read_pattern

# ------------------------------------------------------------------------------ text patterns


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_xy_with_comments_header_and_stated_wavelength(tmp_path):
    path = write(
        tmp_path,
        "scan.xy",
        "# Instrument: lab diffractometer\n# Wavelength (A): 0.70930\n2theta intensity\n\n"
        "10.00 120.5\n10.02 130.0  # inline note\n! another comment\n10.04 -3.5\n",
    )
    pattern = read_pattern(path)
    np.testing.assert_array_equal(pattern.two_theta, [10.0, 10.02, 10.04])
    np.testing.assert_array_equal(pattern.intensity, [120.5, 130.0, -3.5])
    assert pattern.sigma is None
    assert pattern.wavelength == 0.7093
    assert pattern.source == str(path)
    # An explicit wavelength wins over the stated one.
    assert read_pattern(path, wavelength=1.5406).wavelength == 1.5406


def test_wavelength_is_never_assumed(tmp_path):
    pattern = read_pattern(write(tmp_path, "plain.xy", "10 1\n11 2\n"))
    assert pattern.wavelength is None
    with pytest.raises(ValueError, match="wavelength is unknown"):
        pattern.d_spacing()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # Units: Angstrom in its spellings, nm and pm converted.
        ("# Wavelength = 1.54056 Å", 1.54056),
        ("# wavelength 1.54056 A", 1.54056),
        ("# wavelength 1.54056A", 1.54056),
        ("# Wavelength: 0.70930 angstrom", 0.7093),
        ("# Wavelength [Angstroms] 0.70930", 0.7093),
        ("# Wavelength (A): 0.70930", 0.7093),
        ("# Wavelength: 0.154056 nm", 1.54056),
        ("# wavelength 154.056 pm", 1.54056),
        ("# The X-ray wavelength was 1.5406 Å", 1.5406),
        # Key and value without a unit: Angstrom when it can only be Angstrom (0.3-3).
        ("# wavelength: 1.5406", 1.5406),
        ("lambda = 0.7093", 0.7093),
        ("_diffrn_radiation_wavelength 0.7093", 0.7093),
        # Emission lines: K-alpha1 preferred over K-alpha2, in any spelling and order.
        ("# Kα1 = 1.540562 Å, Kα2 = 1.544390 Å", 1.540562),
        ("# K-Alpha1 1.540598, K-Alpha2 1.544426, ratio 0.5", 1.540598),
        ("# Ka2 1.54439 A Ka1 1.54056 A", 1.54056),
        ("# Wavelength (A): 1.544390 (Ka2), 1.540562 (Ka1)", 1.540562),
        ("# lambda1 = 1.54056, lambda2 = 1.54439", 1.54056),
        ("# K-alpha 1.54184 A", 1.54184),  # the doublet's mean is a wavelength too
        # Anode names: their K-alpha1.
        ("# Anode Cu, wavelength type K-Alpha1, scan time 1.2 s/step", 1.54056),
        ("# Radiation: Co", 1.78897),
        ("# Target: Mo Kα", 0.7093),
        ("# Tube: Fe", 1.93604),
        ("# CrKa1 radiation", 2.2897),
        ("# source: silver", 0.559421),
        ("# Anode Cu, wavelength 1.5406 A", 1.5406),  # consistent with the anode
        # Nothing about the wavelength: unknown, as before.
        ("# scan time 1.2 s/step, file 64 kB, sample Fe2O3", None),
    ],
)
def test_header_wavelength_forms(tmp_path, caplog, header, expected):
    path = write(tmp_path, "scan.xy", f"{header}\n10 1\n11 2\n")
    with caplog.at_level("WARNING", logger="physmoe.data.readers"):
        pattern = read_pattern(path)
    if expected is None:
        assert pattern.wavelength is None and caplog.text == ""
        return
    assert pattern.wavelength == pytest.approx(expected, abs=1e-9)
    # The value used and where it came from are reported.
    assert f"using the wavelength {expected:.6g} A" in caplog.text and "line 1" in caplog.text
    assert str(path) in caplog.text


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("# wavelength type K-Alpha1, scan time 1.2 s/step", "gives no value with a unit"),
        ("# wavelength 0.154", r"0.154 without a unit \(Angstrom or nm\?\)"),
        ("# Ka2 = 1.54439 A", "only a K-alpha2 wavelength"),
        ("# Radiation: Cu Kβ", "K-beta"),
        (
            "# wavelength 1.5406 A\n# wavelength 0.7093 A",
            r"1.5406 A \(line 1\) and 0.7093 A \(line 2\)",
        ),
        ("# Kα1 1.54056 Å\n# Kα1 0.70930 Å", "K-alpha1 1.54056 A"),
        ("# anode Cu, anode Co", "anodes Co, Cu"),
        ("# wavelength: 1.5406 A, anode Mo", "the anode is Mo"),
        ("# wavelength 15406 A", "no X-ray wavelength"),
    ],
)
def test_ambiguous_header_wavelengths_are_refused_unless_given(tmp_path, header, reason):
    path = write(tmp_path, "scan.xy", f"{header}\n10 1\n11 2\n")
    expected = rf"scan\.xy: ambiguous wavelength in the header: .*{reason}.*--wavelength"
    with pytest.raises(ValueError, match=expected):
        read_pattern(path)
    assert read_pattern(path, wavelength=1.78897).wavelength == 1.78897  # the user's value wins


def test_the_callers_wavelength_wins_without_a_warning(tmp_path, caplog):
    path = write(tmp_path, "scan.xy", "# Wavelength: 1.54056 A\n10 1\n11 2\n")
    with caplog.at_level("WARNING", logger="physmoe.data.readers"):
        assert read_pattern(path, wavelength=0.7093).wavelength == 0.7093
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("comma.csv", "two_theta,intensity,sigma\n10.0,5.0,0.5\n10.5,6.0,0.6\n11.0,7.0,0.7\n"),
        ("semicolon.csv", "10.0;5.0;0.5\n10.5;6.0;0.6\n11.0;7.0;0.7\n"),
        ("tabs.xye", "10.0\t5.0\t0.5\n10.5\t6.0\t0.6\n11.0\t7.0\t0.7\n"),
        ("spaces.xye", "  10.0   5.0 0.5\n10.5 6.0   0.6\n11.0 7.0 0.7\n"),
        ("descending.xye", "11.0 7.0 0.7\n10.5 6.0 0.6\n10.0 5.0 0.5\n"),
    ],
)
def test_delimiters_sigma_and_descending(tmp_path, name, text):
    pattern = read_pattern(write(tmp_path, name, text))
    np.testing.assert_array_equal(pattern.two_theta, [10.0, 10.5, 11.0])
    np.testing.assert_array_equal(pattern.intensity, [5.0, 6.0, 7.0])
    np.testing.assert_array_equal(pattern.sigma, [0.5, 0.6, 0.7])


def test_explicit_delimiter(tmp_path):
    pattern = read_pattern(write(tmp_path, "pipe.txt", "10|1\n20|2\n"), delimiter="|")
    np.testing.assert_array_equal(pattern.intensity, [1.0, 2.0])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10 1\n11 2\n12 oops\n", r"bad\.xy:3: cannot parse '12 oops'"),
        ("10 1\n11 2 0.1\n", r"bad\.xy:2: 3 columns, but the first data line \(line 1\) has 2"),
        ("10 1 2 3\n", r"bad\.xy:1: expected 2 columns"),
        ("10\n", r"bad\.xy:1: expected 2 columns"),
        ("10 1\n11 nan\n", r"bad\.xy:2: non-finite value"),
        ("10 1\n12 2\n11 3\n", r"bad\.xy:3: 2theta 11.0 does not increase"),
        ("10 1\n10 2\n", r"bad\.xy:2: 2theta 10.0 does not increase"),
        ("10 1 0.1\n11 2 -0.1\n", r"bad\.xy:2: negative sigma"),
        ("0 1\n11 2\n", r"bad\.xy:1: 2theta 0.0 is outside"),
        ("# only a comment\n", r"bad\.xy: no data lines"),
    ],
)
def test_malformed_patterns_name_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_pattern(write(tmp_path, "bad.xy", text))


_PLAIN = "# Wavelength (A): 0.70930\n10.0 5.0\n10.5 6.0\n11.0 7.0\n"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("gzip.xy.gz", __import__("gzip").compress(_PLAIN.encode())),
        ("utf16.xy", _PLAIN.encode("utf-16")),  # with its BOM
        ("utf16le-nobom.xy", _PLAIN.encode("utf-16-le")),
        ("bom.xy", b"\xef\xbb\xbf" + _PLAIN.encode()),
        ("nul.xy", b"\x00\x00\x00" + _PLAIN.encode()),
        ("bom-first-line-data.xy", b"\xef\xbb\xbf10.0 5.0\n10.5 6.0\n11.0 7.0\n"),
        ("nul-first-line-data.xy", b"\x00\x0010.0 5.0\n10.5 6.0\n11.0 7.0\n"),
        ("latin1.xy", "# Wavelength (Å): 0.70930\n".encode("latin-1") + _PLAIN.encode()[26:]),
        ("decimal-comma.xy", b"10,0 5,0\n10,5 6,0\n11,0 7,0\n"),
        ("decimal-comma.csv", b"10,0;5,0\n10,5;6,0\n11,0;7,0\n"),
        ("decimal-comma-tab.xy", b"10,0\t5\n10,5\t6\n11,0\t7\n"),
        ("fortran.xy", b"1.0D+01 5.0d0\n1.05D1 0.6D+01\n1.1D+01 7.0D0\n"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_encodings_compression_and_number_formats(tmp_path, name, data):
    """Every first data line is kept (a BOM or NUL bytes used to turn it into a "header")."""
    path = tmp_path / name
    path.write_bytes(data)
    pattern = read_pattern(path)
    np.testing.assert_array_equal(pattern.two_theta, [10.0, 10.5, 11.0])
    np.testing.assert_array_equal(pattern.intensity, [5.0, 6.0, 7.0])
    if b"Wavelength" in data or "gz" in name or "utf16" in name:
        assert pattern.wavelength == 0.7093


def test_undecodable_or_corrupt_files_name_the_file(tmp_path):
    path = tmp_path / "scan.xy"
    path.write_bytes("10 1\n11 2 # Å\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"scan\.xy: cannot decode the file as utf-8"):
        read_pattern(path, encoding="utf-8")
    broken = tmp_path / "broken.xy.gz"
    broken.write_bytes(__import__("gzip").compress(b"10 1\n11 2\n")[:12])
    with pytest.raises(ValueError, match=r"broken\.xy\.gz: cannot decompress this gzip file"):
        read_pattern(broken)
    archive = tmp_path / "scan.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(ValueError, match=r"scan\.zip is a zip archive"):
        read_pattern(archive)


def test_no_data_lines_names_the_first_unparsable_line(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.xy: no data lines .* line 2 \('angle x 5'\)"):
        read_pattern(write(tmp_path, "bad.xy", "# c\nangle x 5\n"))


def test_missing_pattern_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.xy"):
        read_pattern(tmp_path / "nothing.xy")


def test_pattern_to_wavelength_goes_through_d_spacing():
    # Co K-alpha1 -> Cu K-alpha1: Bragg's law by hand for one point.
    pattern = Pattern(np.array([20.0, 40.0, 170.0]), np.array([1.0, 2.0, 3.0]), wavelength=1.78897)
    d = 1.78897 / (2 * math.sin(math.radians(10.0)))
    converted = pattern.to_wavelength(1.54056)
    assert converted.two_theta[0] == pytest.approx(
        math.degrees(2 * math.asin(1.54056 / (2 * d))), abs=1e-12
    )
    assert len(converted) == 3  # 170 deg at Co: d = 0.898 A, Cu / (2 d) = 0.858 still diffracts
    to_long = pattern.to_wavelength(2.5)  # 2.5 / (2 * 0.898) > 1: that point is dropped
    assert len(to_long) == 2 and to_long.wavelength == 2.5
    np.testing.assert_array_equal(to_long.intensity, [1.0, 2.0])


# ------------------------------------------------------------------------------------- CIF


def test_read_cif(tmp_path):
    path = write(
        tmp_path,
        "cscl.cif",
        "data_CsCl\n_cell_length_a 4.12\n_cell_length_b 4.12\n"
        "_cell_length_c 4.12\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 90\n_cell_angle_gamma 90\n"
        "_symmetry_space_group_name_H-M 'P m -3 m'\nloop_\n"
        "_atom_site_label\n_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
        "Cs1 0 0 0\nCl1 0.5 0.5 0.5\n",
    )
    crystal = read_cif(path)
    assert crystal.species == ["Cs", "Cl"] and crystal.space_group == 221


# ------------------------------------------------------------------------- survey regressions


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "5.00 1,234.5\n5.05 1,240.0\n5.10 20\n5.15 30\n",
            r"bad\.xy:1: cannot parse '5\.00 1,234\.5'",
        ),
        ("1,234.5 100\n10 1\n11 2\n", r"bad\.xy:1: cannot parse '1,234\.5 100'"),
        ("# c\n12.3x 100\n12.4 100\n12.5 90\n", r"bad\.xy:2: cannot parse '12\.3x 100'"),
        ("10.0 12a\n10.5 13\n11.0 14\n", r"bad\.xy:1: cannot parse '10\.0 12a'"),
    ],
)
def test_number_led_lines_before_the_data_are_no_header(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_pattern(write(tmp_path, "bad.xy", text))


@pytest.mark.parametrize(
    "header",
    [
        "2theta intensity",
        "2 Theta, Intensity",
        "2θ (deg) counts",
        "Angle 1 Counts 2",
        "2024-05-01 12:00 scan 3",
    ],
)
def test_text_headers_before_the_data_are_still_skipped(tmp_path, header):
    pattern = read_pattern(write(tmp_path, "scan.xy", f"{header}\n10 1\n11 2\n"))
    np.testing.assert_array_equal(pattern.two_theta, [10.0, 11.0])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("# Co anode, 40 kV, 30 mA", 1.78897),
        ("# Mo target", 0.7093),
        ("# Fe-tube, 35 kV", 1.93604),
        ("# Cu radiation", 1.54056),
        ("# K-Alpha1 1.540598 A, Ratio K-Alpha2/K-Alpha1 0.5", 1.540598),
        ("# K-Alpha1 [A] 1.540598; K-Alpha2 [A] 1.544426; Ratio K-Alpha2/K-Alpha1 0.5", 1.540598),
    ],
)
def test_header_anode_after_element_and_ratio_clauses(tmp_path, header, expected):
    assert read_pattern(
        write(tmp_path, "scan.xy", f"{header}\n10 1\n11 2\n")
    ).wavelength == pytest.approx(expected)


@pytest.mark.parametrize("value", [True, "1.54", 1 + 2j, [1.54]])
def test_wavelength_argument_must_be_a_number(tmp_path, value):
    path = write(tmp_path, "scan.xy", "10 1\n11 2\n")
    with pytest.raises(
        TypeError, match=rf"wavelength must be a number in Angstrom, got {re.escape(repr(value))}"
    ):
        read_pattern(path, wavelength=value)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_byte_order_mark(tmp_path, encoding):
    path = tmp_path / "scan.xy"
    path.write_bytes("5.00 20.0\n5.05 21.0\n5.10 22.0\n".encode(encoding))
    np.testing.assert_array_equal(read_pattern(path).intensity, [20.0, 21.0, 22.0])
