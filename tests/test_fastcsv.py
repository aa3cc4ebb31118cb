"""The scan table's slabs parsed on their raw bytes (xrdct_dask.io.fastcsv).

Oracle: Python's float() (correctly rounded, what numpy.loadtxt gives) on the same text; a value
the fast parser takes must be the same double, bit for bit (tolerance: none).  Text it does not
take in its plain form gives None (the caller parses it the general way), never a wrong number.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrdct_dask.io import fastcsv, tableslabs


def _decimal(rng) -> str:
    """A random decimal as scan files and monitors write them: fixed, many digits, exponents."""
    sign = rng.choice(["", "-", "+"])
    kind = rng.integers(0, 5)
    if kind == 0:
        return sign + str(int(rng.integers(0, 10 ** int(rng.integers(1, 16)))))
    if kind == 1:
        return sign + f"{rng.uniform(0, 10 ** int(rng.integers(0, 6))):.{int(rng.integers(0, 9))}f}"
    if kind == 2:
        return sign + repr(float(rng.normal() * 10.0 ** int(rng.integers(-5, 6))))  # 15-17 digits
    if kind == 3:
        return sign + f"{int(rng.integers(1, 10 ** 6))}e{int(rng.integers(-25, 25))}"
    return sign + f"{rng.uniform(0, 1):.{int(rng.integers(1, 17))}f}".lstrip("0")  # '.5', '.123...'


def test_plain_numbers_are_read_as_float_reads_them(rng):
    """3000 random decimals (integers, fixed point with 0-16 decimals, 17-digit repr, exponents up
    to 1e+-25, leading '.', signs), each alone: every value the parser gives is float()'s double;
    where it gives up (a significand of 2^53 or more, a power of ten past 1e22) it says so (None).
    Then those it took, 5 a line (some lines ended by CRLF), columns picked out of order."""
    taken = []
    for _ in range(3000):
        text = _decimal(rng)
        got = fastcsv.parse_numbers(text.encode(), 1, [0])
        if got is not None:
            assert got.shape == (1, 1) and got[0, 0].tobytes() == np.float64(float(text)).tobytes(), text
            taken.append(text)
    assert len(taken) > 2000  # most are plain
    fields = np.array(taken[:len(taken) // 5 * 5]).reshape(-1, 5)
    raw = "".join(",".join(f) + ("\r\n" if k % 7 == 0 else "\n") for k, f in enumerate(fields)).encode()
    want = np.array([[float(f[4]), float(f[0]), float(f[2])] for f in fields])
    assert fastcsv.parse_numbers(raw, 5, [4, 0, 2]).tobytes() == want.tobytes()  # bit for bit, -0.0 included


@pytest.mark.parametrize("text", [
    "1,2,3\n4,5\n",  # a short line
    "1,2,3\n4,5,6,7\n",  # a long one
    "1,2, 3\n",  # a space
    "1,2,3 # note\n",  # a comment after the values
    "1,nan,3\n",
    "1,,3\n",
    "1,2,abc\n",
    "1,2,3e\n",
    '1,"2",3\n',
    "1,2,12345678901234567890\n",  # a significand past 2^53
    "1,2,1e-30\n",  # a power of ten past 1e22
])
def test_anything_but_plain_numbers_is_left_to_the_general_reader(text):
    assert fastcsv.parse_numbers(text.encode(), 3, [0, 1, 2]) is None


def test_blank_and_comment_lines_and_a_last_line_without_newline():
    raw = b"# header comment\n1,2.5,3\n\n4,5,-6e2\r\n#x\n7,.5,9"
    np.testing.assert_array_equal(fastcsv.parse_numbers(raw, 3, [2, 1]), [[3, 2.5], [-600, 5], [9, 0.5]])
    assert fastcsv.parse_numbers(b"", 3, [0]).shape == (0, 1)


def test_a_plain_slab_is_read_without_pandas(tmp_path, monkeypatch):
    """The simulator's scan table and monitor are plain: their slabs are read without pandas (its
    C reader made 22 % of the conversion's CPU time) and equal numpy.loadtxt's values."""
    from xrdct_dask.simulate import write_scan_table

    write_scan_table(tmp_path / "s.csv", 2, 5, 4, monitor_path=tmp_path / "m.txt", seed=1)

    def no_pandas(*a, **k):
        raise AssertionError("pandas was used")

    monkeypatch.setattr(tableslabs.pd, "read_csv", no_pandas)
    table = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    parts = [tableslabs.read_table_slab(tmp_path / "s.csv", a, b)
             for a, b in tableslabs.line_slabs(tmp_path / "s.csv", 100, header=True)]
    for k, c in enumerate(["index", "iz", "iomega", "ix", "omega_deg", "x_mm", "z_mm"]):
        np.testing.assert_array_equal(np.concatenate([p[c] for p in parts]), table[:, k], err_msg=c)
    mon = [tableslabs.read_monitor_slab(tmp_path / "m.txt", a, b)
           for a, b in tableslabs.line_slabs(tmp_path / "m.txt", 100)]
    np.testing.assert_array_equal(np.concatenate(mon), np.loadtxt(tmp_path / "m.txt"))
