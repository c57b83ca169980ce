"""Numbers that cannot drift: README's benchmark lines and RESULTS.md are what `benchmarks.report` renders.

The first test is the guard: hand-editing a figure, or committing a result file without rerunning
`python -m benchmarks.report`, fails it. The others pin the verdict rules on made-up records.
"""

from __future__ import annotations

import pytest

from benchmarks import report


def test_readme_block_and_results_md_are_the_rendering_of_the_committed_results():
    records = report.load_results()
    assert records, "no benchmark results found"
    readme = report.README.read_text()
    assert readme == report.render_readme(readme, records), (
        "README.md's benchmark lines differ from `python -m benchmarks.report`: run it"
    )
    assert report.RESULTS_MD.read_text() == report.render_results_md(records), (
        "benchmarks/RESULTS.md differs from `python -m benchmarks.report`: run it"
    )
    assert report.main(["--check"]) == 0


def test_every_claim_finds_its_rows():
    """A claim whose benchmark has a result computes from it (a renamed row or column fails here); one
    without a result says so instead of showing a number."""
    records = report.load_results()
    for claim in report.CLAIMS:
        record = records.get(claim.benchmark)
        shown, word = report.verdict(claim, record)
        if record is None:
            assert (shown, word) == ("—", "not measured yet")
        else:
            assert word != "not measured yet"


def _record(value: float, *, commit: str, bf16_kernels: bool = True) -> dict:
    return {
        "date": "2026-12-07 10:00:00",
        "commit": commit,
        "machine": {"cpu_model": "Test CPU", "bf16_kernels": bf16_kernels},
        "columns": ["x"],
        "rows": [{"x": value}],
    }


CLAIM = report.Claim("made_up", "a ratio", lambda rows: rows[0]["x"], goal=(">=", 1.5))


@pytest.mark.parametrize(
    ("value", "commit", "expected"),
    [
        (1.6, "abc123", "**met**"),
        (1.4, "abc123", "**missed**"),
        (1.6, "", "unverified (no commit named: rerun)"),  # a goal is met only on a measurement of known code
        (1.4, "", "missed (no commit named: rerun)"),
    ],
)
def test_verdicts(value, commit, expected):
    shown, word = report.verdict(CLAIM, _record(value, commit=commit))
    assert (shown, word) == (f"{value:.3g}×", expected)


def test_bf16_claims_are_not_measurable_without_bf16_kernels():
    claim = report.Claim(
        "made_up", "bf16", lambda rows: rows[0]["x"], goal=(">=", 3.0), needs_bf16_kernels=True
    )

    shown, word = report.verdict(claim, _record(5.0, commit="abc", bf16_kernels=False))
    assert shown == "—" and word.startswith("not measurable here")


def test_readme_without_markers_is_an_error():
    with pytest.raises(ValueError, match="lacks the markers"):
        report.readme_with_block("# no markers here\n", "block")
