"""Reading a compiled XLA program's HLO text: instructions, their bytes, collectives, where they came from.

Used by `tpu_aot.py` on the optimised HLO of TPU programs (``compiled.as_text()``), whose shapes
carry TPU layouts (``bf16[16,96,96,64]{3,2,1,0:T(8,128)(2,1)}``: minor-to-major order, tiles, and
``S(1)`` for arrays placed in on-chip memory). Plain text parsing, no XLA bindings: the format is
XLA's ``HloModule::ToString``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
               "s4": 0.5, "u4": 0.5, "token": 0}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "ragged-all-to-all")
# Instructions that move no data of their own: views, tuples, parameters and the ends of async pairs.
FREE_OPCODES = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "copy-done",
                          "slice-done", "all-reduce-done", "all-gather-done", "collective-permute-done",
                          "async-done", "after-all", "partition-id", "replica-id", "opt-barrier"})

_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_HEAD = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_TILE = re.compile(r"T\(([0-9,]+)\)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')


@dataclasses.dataclass(frozen=True)
class Array:
    """One array of a shape string: dtype, dimensions, and its layout's tiles and memory space."""

    dtype: str
    dims: tuple[int, ...]
    minor_to_major: tuple[int, ...] | None
    tile: tuple[int, ...] | None
    memory_space: int

    @property
    def logical_bytes(self) -> float:
        return DTYPE_BYTES.get(self.dtype, 4) * math.prod(self.dims)

    @property
    def padded_bytes(self) -> float:
        """Bytes with the minor dimensions padded to the layout's first tile (what TPU memory holds)."""
        if not self.tile or self.minor_to_major is None or not self.dims:
            return self.logical_bytes
        dims = list(self.dims)
        for tile_dim, axis in zip(reversed(self.tile), self.minor_to_major):
            dims[axis] = -(-dims[axis] // tile_dim) * tile_dim
        return DTYPE_BYTES.get(self.dtype, 4) * math.prod(dims)


def parse_arrays(shape: str) -> list[Array]:
    """The arrays of an HLO shape string (one array, or a tuple of them)."""
    arrays = []
    for dtype, dims, layout in _ARRAY.findall(shape):
        if dtype not in DTYPE_BYTES:
            continue
        dims_t = tuple(int(d) for d in dims.split(",") if d)
        minor_to_major, tile, space = None, None, 0
        if layout:
            body = layout[1:-1]
            order, _, rest = body.partition(":")
            if order:
                minor_to_major = tuple(int(d) for d in order.split(",") if d.strip().isdigit())
            tiles = _TILE.findall(rest)
            if tiles:
                tile = tuple(int(d) for d in tiles[0].split(","))
            space_match = re.search(r"S\((\d+)\)", rest)
            space = int(space_match.group(1)) if space_match else 0
        arrays.append(Array(dtype, dims_t, minor_to_major, tile, space))
    return arrays


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str
    computation: str

    @property
    def arrays(self) -> list[Array]:
        return parse_arrays(self.shape)

    @property
    def op_name(self) -> str:
        match = _OP_NAME.search(self.attributes)
        return match.group(1) if match else ""

    @property
    def stack_frame(self) -> int | None:
        match = _FRAME.search(self.attributes)
        return int(match.group(1)) if match else None

    @property
    def estimated_cycles(self) -> int:
        match = _CYCLES.search(self.attributes)
        return int(match.group(1)) if match else 0

    @property
    def called(self) -> str | None:
        match = re.search(r"calls=%?([\w.\-]+)", self.attributes)
        return match.group(1) if match else None


def _matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at ``text[start]`` (strings skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack: list[str] = []
    index, in_string = start, False
    while index < len(text):
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in pairs:
            stack.append(pairs[char])
        elif stack and char == stack[-1]:
            stack.pop()
            if not stack:
                return index + 1
        index += 1
    return len(text)


def parse_instruction(line: str, computation: str) -> Instruction | None:
    head = _HEAD.match(line)
    if not head:
        return None
    rest = line[head.end():]
    if rest.startswith("("):
        end = _matching(rest, 0)
    else:
        end = rest.find(" ")
        if "{" in rest[:end] and rest[:end].count("{") > rest[:end].count("}"):
            end = _matching(rest, rest.index("{"))
    shape, rest = rest[:end], rest[end:].lstrip()
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren].strip()
    close = _matching(rest, paren)
    operands = re.findall(r"%([\w.\-]+)", rest[paren:close])
    return Instruction(head.group(2), shape, opcode, operands, rest[close:], computation)


def computations(text: str) -> Iterator[tuple[str, bool, list[str]]]:
    """(name, is_entry, instruction lines) of every computation in the module text."""
    name, entry, lines = None, False, []
    for line in text.splitlines():
        if name is None:
            match = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
            if match and "=" not in line.split("(")[0]:
                name, entry, lines = match.group(2), bool(match.group(1)), []
            continue
        if line.startswith("}"):
            yield name, entry, lines
            name = None
            continue
        lines.append(line)


@dataclasses.dataclass
class Module:
    """A parsed HLO module: every instruction by name, the entry computation's in order, and
    the source files of its ops (from the stack frame tables JAX attaches)."""

    instructions: dict[str, Instruction]
    entry: list[Instruction]
    frame_files: dict[int, str]
    files: list[str]

    def operand_arrays(self, instruction: Instruction) -> list[Array]:
        arrays = []
        for name in instruction.operands:
            if name in self.instructions:
                arrays.extend(self.instructions[name].arrays)
        return arrays

    def source_file(self, instruction: Instruction) -> str:
        """The innermost source file of the op (from its stack frame), or ``""``."""
        frame = instruction.stack_frame
        return self.frame_files.get(frame, "") if frame is not None else ""

    def origin_instruction(self, instruction: Instruction) -> Instruction:
        """The instruction itself if it has a stack frame, else the first operand it came from
        that has one (see :meth:`origin`); itself if none has."""
        stack, seen = [instruction], set()
        while stack:
            current = stack.pop(0)
            if current.stack_frame is not None:
                return current
            seen.add(current.name)
            stack.extend(self.instructions[name] for name in current.operands
                         if name in self.instructions and name not in seen)
        return instruction

    def origin(self, instruction: Instruction, _seen: set | None = None) -> str:
        """:meth:`source_file`, or for an op the compiler added (a copy between memory spaces or
        layouts, a slice, a pad: no stack frame of its own) that of the first operand it came
        from that has one."""
        own = self.source_file(instruction)
        if own:
            return own
        seen = _seen if _seen is not None else set()
        seen.add(instruction.name)
        for name in instruction.operands:
            operand = self.instructions.get(name)
            if operand is None or name in seen:
                continue
            found = self.origin(operand, seen)
            if found:
                return found
        return ""


def _table(text: str, title: str) -> list[str]:
    match = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", text, re.S | re.M)
    return match.group(1).splitlines() if match else []


def parse_module(text: str) -> Module:
    instructions, entry = {}, []
    for name, is_entry, lines in computations(text):
        for line in lines:
            instruction = parse_instruction(line, name)
            if instruction is None:
                continue
            instructions[instruction.name] = instruction
            if is_entry:
                entry.append(instruction)
    files = {int(line.split()[0]): line.split(None, 1)[1].strip('"') for line in _table(text, "FileNames")}
    locations = {int(line.split()[0]): int(re.search(r"file_name_id=(\d+)", line).group(1))
                 for line in _table(text, "FileLocations")}
    frames = {int(line.split()[0]): int(re.search(r"file_location_id=(\d+)", line).group(1))
              for line in _table(text, "StackFrames")}
    # The innermost frame's file: the most specific place an op came from.
    frame_files = {frame: files.get(locations.get(location, -1), "") for frame, location in frames.items()}
    return Module(instructions, entry, frame_files, list(files.values()))


def instruction_bytes(module: Module, instruction: Instruction, *, padded: bool = True,
                      on_chip: bool = True) -> float:
    """Bytes an entry instruction reads and writes: its operands plus its outputs.

    ``on_chip=False`` leaves out arrays in memory spaces other than 0 (``S(1)``: on-chip memory),
    which cost no HBM traffic. A ``copy-start`` moves its operand once each way.
    """
    if instruction.opcode in FREE_OPCODES:
        return 0.0

    def size(arrays: list[Array]) -> float:
        return sum((a.padded_bytes if padded else a.logical_bytes) for a in arrays
                   if on_chip or a.memory_space == 0)

    operands, outputs = module.operand_arrays(instruction), instruction.arrays
    if instruction.opcode == "copy-start":  # (destination, source, context)
        outputs = outputs[:1]
    elif instruction.opcode.endswith("-start"):  # ((operands...), outputs..., context)
        outputs = [a for a in outputs[len(operands):] if a.dims]
    return size(operands) + size(outputs)


def collectives(module: Module) -> list[dict]:
    """Every collective in the module: kind, the dtypes and bytes of what it moves, and its op name."""
    found = []
    for instruction in module.instructions.values():
        kind = instruction.opcode.removesuffix("-start")
        if kind not in COLLECTIVES:
            continue
        arrays = instruction.arrays
        if instruction.opcode.endswith("-start") and instruction.shape.startswith("("):
            # Async starts return (operands, outputs[, context]): count the operands once.
            arrays = module.operand_arrays(instruction)
        found.append({"kind": kind, "bytes": sum(a.logical_bytes for a in arrays),
                      "arrays": len(arrays), "dtypes": sorted({a.dtype for a in arrays}),
                      "op_name": instruction.op_name})
    return found
