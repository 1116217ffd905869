"""The ``.nnc`` loader under fuzzing (``benchmarks/fuzz.py``): hostile files whose CRCs an
attacker recomputed must be rejected with ``FormatError`` or load as a working model;
never another exception, a crash, a hang, a memory blow-up, non-finite weights or a
model whose forward pass fails."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
N_FILES = 150  # ~10 s at 2 workers once the corpus exists; the corpus takes ~4 s


def _fuzz():
    name = "nnc_fuzz_bench"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "fuzz.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """The seed files, built once per test session."""
    path = tmp_path_factory.mktemp("fuzz-corpus")
    _fuzz().build_corpus(path, log=lambda msg: None)
    return path


def _describe(res, categories):
    lines = []
    for g in res["signatures"]:
        if g["outcome"] in categories:
            ex = g["example"]
            lines.append(f"  {g['count']} x {g['outcome']} {g['exc_type']} at {g['site'] or g['origin']}: "
                         f"#{ex['index']} {ex['seed_file']} [{ex['mutator']}] {ex['mutation']} -> "
                         f"{(ex.get('message') or ex.get('detail') or '')[:200]}")
    return "\n".join(lines[:25])


def test_corpus_covers_every_codec_and_record(corpus_dir):
    seeds = _fuzz().build_corpus(corpus_dir)
    codecs = set().union(*(s.codecs for s in seeds))
    assert codecs >= {"raw", "fp16", "bf16", "int8", "sparse", "deep", "bfp", "binary", "lut", "int",
                      "pow2", "shift"}
    records = " ".join(r for s in seeds for r in s.records)
    for record in ("+kwargs", "activations:", "lowrank:", "removed_blocks:", "arch:hashed"):
        assert record in records
    assert all(s.nbytes < 250_000 for s in seeds)


def test_mutations_are_deterministic_and_every_mutator_applies(corpus_dir):
    fuzz = _fuzz()
    seeds = fuzz.build_corpus(corpus_dir)
    a, b = fuzz.Mutations(seeds, 7), fuzz.Mutations(seeds, 7)
    for i in range(20):
        blob, job = a.make(i)
        blob2, job2 = b.make(i)
        assert blob == blob2 and job.desc == job2.desc
    assert len(fuzz.MUTATORS) >= 60
    for kind in fuzz.MUTATORS:  # each mutator edits at least one seed
        blob, job = fuzz.Mutations(seeds, 0, blobs=a.blobs, mutators=[kind]).make(0)
        assert job.mutator == kind and blob != a.blobs[job.seed]


def test_fuzzed_files_are_rejected_or_load_cleanly(corpus_dir):
    fuzz = _fuzz()
    res = fuzz.run_campaign(N_FILES, seed=0, workers=2, corpus_dir=corpus_dir, log=lambda msg: None)
    counts = res["counts"]
    assert sum(counts.values()) == N_FILES
    bad = {c: counts[c] for c in fuzz.FAILURES if counts[c]}
    assert not bad, f"fuzzing found {bad}:\n{_describe(res, fuzz.FAILURES)}"
    for c in ("other_exception", "crash", "timeout", "memory", "accepted_nonfinite",
              "accepted_forward_fails"):
        assert counts[c] == 0


def test_signed_files_reject_every_mutation(corpus_dir):
    fuzz = _fuzz()
    if not fuzz.signing_available():
        pytest.skip("nncompress.format.signing is not available")
    res = fuzz.run_campaign(60, seed=1, workers=2, corpus_dir=corpus_dir, sign=True, log=lambda msg: None)
    counts = res["counts"]
    assert res["signing"]["total"] == 60
    assert counts["rejected_formaterror"] == 60, f"{counts}:\n{_describe(res, fuzz.CATEGORIES)}"
