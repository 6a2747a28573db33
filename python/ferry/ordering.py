"""A PriorityQueue's order: an item's byte key, whose byte order is the
order Python would give the items, and its key type (its shape)."""

from __future__ import annotations

def _escape(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + b"\x00"


_INF = float("inf")


def _number(x, out: bytearray) -> bool:
    """Appends a number's key: every int, float and bool in one exact
    order. A finite x ≠ 0 is ±2**e × 1.f: a sign class, then e (8 bytes,
    offset) and the bits of f in 7-bit groups, each shifted left with a
    "more follows" bit — a code no other is a prefix of, so that a
    negative number's key can be the positive one's bytes inverted.
    False for NaN, which has no order."""
    if isinstance(x, float):
        if x != x:
            return False
        if x in (_INF, -_INF):
            out += b"\x14" if x > 0 else b"\x10"
            return True
        p, q = x.as_integer_ratio()  # q is a power of two
        k = q.bit_length() - 1
    else:
        p, k = int(x), 0
    if p == 0:
        out += b"\x12"
        return True
    neg = p < 0
    p = -p if neg else p
    bits = p.bit_length() - 1  # the bits after the leading one
    frac = p - (1 << bits)
    if frac:
        trailing = (frac & -frac).bit_length() - 1
        frac >>= trailing
        bits -= trailing
    else:
        bits = 0
    enc = bytearray((p.bit_length() - 1 - k + (1 << 63)).to_bytes(8, "big"))
    if bits == 0:
        enc.append(0)
    else:
        pad = -bits % 7
        frac <<= pad
        n = (bits + pad) // 7
        for i in range(n):
            group = (frac >> (7 * (n - 1 - i))) & 0x7F
            enc.append(group << 1 | (i < n - 1))
    if neg:
        out += b"\x11" + bytes(255 - b for b in enc)
    else:
        out += b"\x13" + enc
    return True


def _orderable_dataclass(x) -> bool:
    params = getattr(type(x), "__dataclass_params__", None)
    return params is not None and params.order and not isinstance(x, type)


def _encode(x, out: bytearray, shape: list) -> bool:
    """Appends x's order key to out and its type to shape; False (nothing
    appended) if it cannot be ordered. Codes sort None < bytes < str <
    tuple < dataclass < numbers (items of different types are never
    compared: the key type keeps them apart)."""
    if isinstance(x, (bool, int, float)):
        mark = len(out)
        out += b"\x21"
        if not _number(x, out):
            del out[mark:]
            return False
        shape.append("n")
    elif x is None:
        out += b"\x00"
        shape.append("z")
    elif isinstance(x, bytes):
        out += b"\x01" + _escape(x)
        shape.append("b")
    elif isinstance(x, str):
        out += b"\x02" + _escape(x.encode("utf-8"))
        shape.append("s")
    elif isinstance(x, tuple):
        out += b"\x05"
        shape.append("(")
        _encode_fields(x, out, shape)
        out += b"\x00"
        shape.append(")")
    elif _orderable_dataclass(x):
        import dataclasses

        cls = type(x)
        out += b"\x06"
        shape.append(f"{cls.__module__}.{cls.__qualname__}(")
        _encode_fields([getattr(x, f.name) for f in dataclasses.fields(x) if f.compare], out, shape)
        out += b"\x00"
        shape.append(")")
    else:
        return False
    return True


def _encode_fields(fields, out: bytearray, shape: list) -> None:
    """A tuple's elements, up to the first that cannot be ordered (its
    place in the shape is "?": anything may follow)."""
    for e in fields:
        if not _encode(e, out, shape):
            shape.append("?")
            break


def order_key_and_type(item) -> tuple:
    """The byte string whose order is the item's order in a PriorityQueue,
    and the item's key type (its shape: the types at each place)."""
    out, shape = bytearray(), []
    if not _encode(item, out, shape):
        raise TypeError(
            f"cannot order items of type {type(item).__name__} in a ferry.PriorityQueue "
            "(numbers, str, bytes, None, tuples and @dataclass(order=True) can be)"
        )
    return bytes(out), "".join(shape).encode()


def order_key(item) -> bytes:
    """The byte string whose order is the item's order in a PriorityQueue."""
    return order_key_and_type(item)[0]
