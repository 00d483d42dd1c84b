#!/usr/bin/env python3
"""Reference fixtures for burnish's GGUF reader (crates/core/src/weights/gguf*).

Run from the repository root:

    /work/venv/bin/python scripts/reference/make_gguf_fixtures.py          # (re)writes the fixture
    /work/venv/bin/python scripts/reference/make_gguf_fixtures.py --check some.gguf

Needs `gguf` (gguf-py, from llama.cpp) and numpy.

Default mode writes crates/core/tests/fixtures/gguf/quants.gguf (deterministic, seed 0) with gguf.GGUFWriter:

  * for each ggml type in TYPES a tensor `<type>` of a few rows x blocks holding quantized bytes: produced by
    `gguf.quants.quantize` where gguf-py can quantize that type, random block bytes (with finite f16 scale
    fields) otherwise; for every block type also `<type>.raw`, random block bytes, which hit bit patterns
    a quantizer never produces;
  * next to each, an F32 twin `<name>.expected` = `gguf.quants.dequantize(bytes, type)`; the Rust test
    (crates/core/tests/gguf.rs) requires bit-exact equality;
  * quantizer references: `q8_0.src` (F32) with `q8_0.ref` = gguf.quants.quantize(src, Q8_0), `bf16.ref`
    = quantize(src, BF16) and `f16.ref` = src.astype(float16), which must equal burnish's quantize_q8_0,
    f32_to_bf16_bits and f32_to_f16_bits byte for byte;
  * metadata of every GGUF value type (the values are listed in METADATA below and in the Rust test), and a
    custom `general.alignment` of 64.

`--check FILE` opens a GGUF (e.g. one written by burnish's GgufWriter) with gguf.GGUFReader, prints its
metadata and tensors, dequantizes every tensor gguf-py supports, and exits non-zero if reading fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "crates/core/tests/fixtures/gguf/quants.gguf"

# Types gguf-py can dequantize and burnish supports. Rows x blocks per row kept small (fixture < 200 KB).
TYPES = [
    T.F32, T.F16, T.BF16,
    T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
    T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K,
    T.IQ4_NL, T.IQ4_XS, T.TQ1_0, T.TQ2_0, T.MXFP4,
]

# Byte offsets of the f16 scale fields in each block type; random bytes there are replaced by finite f16
# values so no NaN reaches the arithmetic (NaN payload propagation is not something to pin down).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
    T.IQ4_NL: [0], T.IQ4_XS: [0], T.TQ1_0: [52], T.TQ2_0: [64], T.MXFP4: [], T.BF16: [],
}

METADATA = [
    # (key, value, type, array element type)
    ("general.architecture", "test", V.STRING, None),
    ("general.name", "burnish gguf fixture", V.STRING, None),
    ("test.u8", 200, V.UINT8, None),
    ("test.i8", -100, V.INT8, None),
    ("test.u16", 60000, V.UINT16, None),
    ("test.i16", -30000, V.INT16, None),
    ("test.u32", 4_000_000_000, V.UINT32, None),
    ("test.i32", -2_000_000_000, V.INT32, None),
    ("test.f32", 0.1, V.FLOAT32, None),
    ("test.bool_true", True, V.BOOL, None),
    ("test.bool_false", False, V.BOOL, None),
    ("test.string", "héllo wörld ✓", V.STRING, None),
    ("test.empty_string", "", V.STRING, None),
    ("test.u64", 2**63 + 5, V.UINT64, None),
    ("test.i64", -(2**62) - 3, V.INT64, None),
    ("test.f64", 0.1, V.FLOAT64, None),
    ("test.array_u8", [0, 1, 255], V.ARRAY, V.UINT8),
    ("test.array_i32", [1, -2, 3], V.ARRAY, V.INT32),
    ("test.array_f32", [0.5, -1.25, 3.0e-8], V.ARRAY, V.FLOAT32),
    ("test.array_u64", [0, 2**64 - 1], V.ARRAY, V.UINT64),
    ("test.array_f64", [0.1, -2.5], V.ARRAY, V.FLOAT64),
    ("test.array_bool", [True, False, True], V.ARRAY, V.BOOL),
    ("test.array_str", ["a", "", "日本語", "<|im_start|>"], V.ARRAY, V.STRING),
    ("test.array_nested", [[1, 2], [3], [-4, 5, 6]], V.ARRAY, V.ARRAY),
]


def f16_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    vals = rng.uniform(-2.0, 2.0, size=n).astype(np.float16)
    # A few subnormal and zero scales.
    vals[:: max(1, n // 3)] = np.float16(0.0)
    if n > 4:
        vals[1] = np.float16(3.0e-6)
    return vals.view(np.uint8).reshape(n, 2)


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off:off + 2] = f16_bytes(rng, n_blocks)
    return blocks


def shape_for(qtype: T) -> tuple[int, int]:
    block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
    if block_size == 1:
        return (3, 40)
    if block_size >= 256:
        return (2, 2 * block_size)
    return (3, 2 * block_size)


def add_quant(w: gguf.GGUFWriter, name: str, qtype: T, raw: np.ndarray, shape: tuple[int, int]) -> None:
    """Adds `name` (quantized bytes `raw`, logical row-major `shape`) and `name.expected`."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    byte_rows = raw.reshape(shape[0], shape[1] // block_size * type_size)
    w.add_tensor(name, byte_rows, raw_dtype=qtype)
    expected = gguf.quants.dequantize(byte_rows, qtype).astype(np.float32, copy=False)
    assert expected.shape == shape, (name, expected.shape, shape)
    w.add_tensor(name + ".expected", np.ascontiguousarray(expected))


def make(out: Path) -> None:
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(out), arch="test")
    w.add_custom_alignment(64)
    for key, val, vtype, sub in METADATA:
        if key == "general.architecture":
            continue  # written by GGUFWriter(arch=...)
        w.add_key_value(key, val, vtype, sub_type=sub)

    for qtype in TYPES:
        shape = shape_for(qtype)
        name = qtype.name.lower()
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = shape[0] * shape[1] // block_size
        if qtype == T.F32:
            x = rng.standard_normal(shape).astype(np.float32)
            x.flat[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -3.4e38]
            w.add_tensor(name, x)
            w.add_tensor(name + ".expected", x.copy())
            continue
        if qtype == T.F16:
            x = rng.standard_normal(shape).astype(np.float16)
            x.flat[:7] = [0.0, -0.0, np.inf, -np.inf, 6.0e-8, -65504.0, np.nan]  # quiet NaN 0x7e00
            add_quant(w, name, qtype, x.view(np.uint8), shape)
            continue
        x = rng.standard_normal(shape).astype(np.float32) * np.float32(0.05)
        try:
            q = gguf.quants.quantize(x, qtype)
            source = "quantize"
        except NotImplementedError:
            q = random_blocks(rng, qtype, n_blocks)
            source = "random"
        add_quant(w, name, qtype, np.asarray(q, dtype=np.uint8), shape)
        raw_blocks = 3 if block_size > 1 else 96
        add_quant(w, name + ".raw", qtype, random_blocks(rng, qtype, raw_blocks), (1, block_size * raw_blocks))
        print(f"{qtype.name:7} {shape} from {source}")

    # Quantizer references.
    src = (rng.standard_normal((4, 64)) * 0.1).astype(np.float32)
    src[1] = 0.0  # an all-zero block pair
    src[2, :32] = np.arange(32, dtype=np.float32) - 15.5  # amax 15.5 ... plus exact halves below
    src[2, 32:] = np.concatenate([[127.0], np.arange(31, dtype=np.float32) - 15.5])  # d = 1: x*id = n.5
    src[3, :4] = [1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, -(1.0 + 2.0**-8), 65520.0]  # bf16 ties, f16 overflow
    w.add_tensor("q8_0.src", src)
    q8 = gguf.quants.quantize(src, T.Q8_0)
    w.add_tensor("q8_0.ref", q8, raw_dtype=T.Q8_0)
    bf = gguf.quants.quantize(src, T.BF16)
    w.add_tensor("bf16.ref", bf, raw_dtype=T.BF16)
    with np.errstate(over="ignore"):  # 65520 rounds to f16 inf on purpose
        w.add_tensor("f16.ref", src.astype(np.float16))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size} bytes)")


def check(path: Path) -> int:
    r = gguf.GGUFReader(str(path))
    print(f"{path}: {len(r.fields)} fields, {len(r.tensors)} tensors")
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types = "/".join(t.name for t in field.types)
        try:
            value = field.contents()
        except Exception as e:  # noqa: BLE001 - report and continue
            value = f"<{e}>"
        text = repr(value)
        print(f"  {name} [{types}] = {text[:100]}{'…' if len(text) > 100 else ''}")
    for t in r.tensors:
        line = f"  tensor {t.name} {t.tensor_type.name} dims={list(map(int, t.shape))} offset={t.data_offset}"
        try:
            x = gguf.quants.dequantize(t.data, t.tensor_type)
            line += f" first={np.asarray(x).ravel()[:3].tolist()}"
        except NotImplementedError:
            line += " (gguf-py cannot dequantize)"
        print(line)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", type=Path, help="read FILE with gguf.GGUFReader and print it")
    ap.add_argument("--out", type=Path, default=OUT, help=f"fixture path (default {OUT.relative_to(REPO)})")
    args = ap.parse_args()
    if args.check:
        return check(args.check)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
