// Binary frames: a two-byte header (version, kind), then the body as an rkyv archive in the
// unaligned, little-endian, 32-bit-offset format (wire/PROTOCOL.md, "Binary layout"). The
// writer lays data out exactly as rkyv's serializer does: each field's out-of-line data in
// field order (a list's elements' own data before the elements), then the struct, with the
// root struct last. The reader bounds-checks every offset and length and reads u64 fields
// with DataView.getBigUint64, so ids are exact.

import type { ClientFrame, ServerFrame } from "./frames.js";
import { CLIENT_FRAMES, SERVER_FRAMES, fieldSize, structSize } from "./layout.js";
import type { FieldType, FrameSet, StructLayout } from "./layout.js";
import { ErrorCode, PROTOCOL_VERSION } from "./protocol.js";
import { WireError, checkedLayout, utf8 } from "./check.js";

const HEADER_LEN = 2;
/** Strings of at most this many UTF-8 bytes are stored inside their struct. */
const INLINE_STRING_BYTES = 8;

export function encodeClientFrame(frame: ClientFrame): Uint8Array {
  return encodeFrame(CLIENT_FRAMES, frame);
}

export function decodeServerFrame(bytes: Uint8Array): ServerFrame {
  return decodeFrame(SERVER_FRAMES, bytes) as ServerFrame;
}

/** The server's direction, for mock servers and tests. */
export function encodeServerFrame(frame: ServerFrame): Uint8Array {
  return encodeFrame(SERVER_FRAMES, frame);
}

/** The client's direction, for mock servers and tests. */
export function decodeClientFrame(bytes: Uint8Array): ClientFrame {
  return decodeFrame(CLIENT_FRAMES, bytes) as ClientFrame;
}

type Fields = Record<string, unknown>;

function encodeFrame(set: FrameSet, frame: { type: string }): Uint8Array {
  const layout = checkedLayout(set, frame);
  const out = new Writer();
  out.bytes([PROTOCOL_VERSION, layout.kind]);
  const resolved = resolveStruct(out, layout, frame as unknown as Fields);
  writeStruct(out, layout, frame as unknown as Fields, resolved);
  const bytes = out.finish();
  if (bytes.length > set.maxBytes) {
    throw new WireError(ErrorCode.TOO_LARGE, `frame is ${bytes.length} bytes, the limit is ${set.maxBytes}`);
  }
  return bytes;
}

/** Where each field's out-of-line data went (strings over 8 bytes and lists), by field. */
type Resolved = (number | undefined)[];

function resolveStruct(out: Writer, layout: StructLayout, value: Fields): Resolved {
  return layout.fields.map(([name, type]) => resolveField(out, type, value[name]));
}

function resolveField(out: Writer, type: FieldType, value: unknown): number | undefined {
  if (typeof type === "string" || "enum" in type) return undefined;
  if ("string" in type) {
    const bytes = utf8.encode(value as string);
    if (bytes.length <= INLINE_STRING_BYTES) return undefined;
    const at = out.length;
    out.bytes(bytes);
    return at;
  }
  const items = value as unknown[];
  const element = type.list;
  if (element === "u64") {
    const at = out.length;
    for (const item of items) out.u64(item as bigint);
    return at;
  }
  const resolved = items.map((item) => resolveStruct(out, element, item as Fields));
  const at = out.length;
  items.forEach((item, i) => writeStruct(out, element, item as Fields, resolved[i]!));
  return at;
}

function writeStruct(out: Writer, layout: StructLayout, value: Fields, resolved: Resolved): void {
  layout.fields.forEach(([name, type], i) => writeField(out, type, value[name], resolved[i]));
}

function writeField(out: Writer, type: FieldType, value: unknown, dataAt: number | undefined): void {
  switch (type) {
    case "u16":
      return out.u16(value as number);
    case "u32":
      return out.u32(value as number);
    case "u64":
    case "defaulted_u64":
      return out.u64(value as bigint);
    case "bool":
      return out.bytes([value ? 1 : 0]);
    case "option_u64":
    case "omittable_u64": {
      const none = value === null || value === undefined;
      out.bytes([none ? 0 : 1]);
      return out.u64(none ? 0n : (value as bigint));
    }
  }
  if ("enum" in type) return out.bytes([type.enum.indexOf(value as string)]);
  const fieldAt = out.length;
  if ("string" in type) {
    const bytes = utf8.encode(value as string);
    if (dataAt === undefined) {
      out.bytes(bytes);
      out.bytes(new Array<number>(INLINE_STRING_BYTES - bytes.length).fill(0xff));
      return;
    }
    const len = bytes.length;
    out.u32((len & 0x3f) | 0x80 | ((len >>> 6) << 8));
    return out.i32(dataAt - fieldAt);
  }
  out.i32(dataAt! - fieldAt);
  out.u32((value as unknown[]).length);
}

class Writer {
  private buffer = new Uint8Array(256);
  private view = new DataView(this.buffer.buffer);
  length = 0;

  /** Room for `n` more bytes, at the returned position. It may replace the buffer and its
   * view, so callers take the position before they touch the view. */
  private reserve(n: number): number {
    const at = this.length;
    if (at + n > this.buffer.length) {
      const bigger = new Uint8Array(Math.max(this.buffer.length * 2, at + n));
      bigger.set(this.buffer);
      this.buffer = bigger;
      this.view = new DataView(bigger.buffer);
    }
    this.length += n;
    return at;
  }

  bytes(data: ArrayLike<number>): void {
    const at = this.reserve(data.length);
    this.buffer.set(data, at);
  }
  u16(value: number): void {
    const at = this.reserve(2);
    this.view.setUint16(at, value, true);
  }
  u32(value: number): void {
    const at = this.reserve(4);
    this.view.setUint32(at, value, true);
  }
  i32(value: number): void {
    const at = this.reserve(4);
    this.view.setInt32(at, value, true);
  }
  u64(value: bigint): void {
    const at = this.reserve(8);
    this.view.setBigUint64(at, value, true);
  }
  finish(): Uint8Array {
    return this.buffer.slice(0, this.length);
  }
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function decodeFrame(set: FrameSet, bytes: Uint8Array): { type: string } {
  if (bytes.length > set.maxBytes) {
    throw new WireError(ErrorCode.TOO_LARGE, `frame is ${bytes.length} bytes, the limit is ${set.maxBytes}`);
  }
  if (bytes.length < HEADER_LEN) {
    throw new WireError(ErrorCode.MALFORMED_FRAME, `frame is ${bytes.length} bytes, shorter than its header`);
  }
  if (bytes[0] !== PROTOCOL_VERSION) {
    throw new WireError(ErrorCode.UNSUPPORTED_VERSION, `protocol version ${bytes[0]} is not supported`);
  }
  const entry = set.byKind.get(bytes[1]!);
  if (entry === undefined) throw new WireError(ErrorCode.UNKNOWN_KIND, `frame kind ${bytes[1]} is unknown`);
  const [type, layout] = entry;
  const reader: Reader = new Reader(bytes);
  const root = bytes.length - structSize(layout);
  reader.need(root >= HEADER_LEN, "the frame is shorter than its body");
  return { type, ...reader.struct(layout, root) };
}

class Reader {
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  need(ok: boolean, what: string): asserts ok {
    if (!ok) throw new WireError(ErrorCode.MALFORMED_FRAME, `malformed frame: ${what}`);
  }

  struct(layout: StructLayout, at: number): Fields {
    const value: Fields = {};
    for (const [name, type] of layout.fields) {
      const field = this.field(type, at, name);
      if (field !== undefined) value[name] = field;
      at += fieldSize(type);
    }
    return value;
  }

  /** The position of `count` items of `size` bytes at `offset` from `at`, checked. */
  private outOfLine(at: number, offset: number, count: number, size: number, name: string): number {
    const start = at + offset;
    this.need(start >= HEADER_LEN && start + count * size <= this.bytes.length, `${name} points outside the frame`);
    return start;
  }

  private field(type: FieldType, at: number, name: string): unknown {
    const view = this.view;
    switch (type) {
      case "u16":
        return view.getUint16(at, true);
      case "u32":
        return view.getUint32(at, true);
      case "u64":
      case "defaulted_u64":
        return view.getBigUint64(at, true);
      case "bool": {
        const byte = view.getUint8(at);
        this.need(byte <= 1, `${name} is not a boolean`);
        return byte === 1;
      }
      case "option_u64":
      case "omittable_u64": {
        const tag = view.getUint8(at);
        this.need(tag <= 1, `${name} has an unknown option tag`);
        if (tag === 1) return view.getBigUint64(at + 1, true);
        return type === "option_u64" ? null : undefined;
      }
    }
    if ("enum" in type) {
      const label = type.enum[view.getUint8(at)];
      this.need(label !== undefined, `${name} has an unknown enum tag`);
      return label;
    }
    if ("string" in type) {
      let start = at;
      let len = 0;
      if ((view.getUint8(at) & 0xc0) === 0x80) {
        const word = view.getUint32(at, true);
        len = (word & 0x3f) | ((word >>> 8) << 6);
        start = this.outOfLine(at, view.getInt32(at + 4, true), len, 1, name);
      } else {
        while (len < INLINE_STRING_BYTES && this.bytes[at + len] !== 0xff) len += 1;
      }
      this.need(len <= type.string, `${name} is longer than ${type.string} bytes`);
      try {
        return strictUtf8.decode(this.bytes.subarray(start, start + len));
      } catch {
        this.need(false, `${name} is not UTF-8`);
      }
    }
    const count = view.getUint32(at + 4, true);
    this.need(count <= type.max, `${name} has more than ${type.max} items`);
    const element = type.list;
    const size = element === "u64" ? 8 : structSize(element);
    const start = this.outOfLine(at, view.getInt32(at, true), count, size, name);
    const items: unknown[] = [];
    for (let i = 0; i < count; i++) {
      const itemAt = start + i * size;
      items.push(element === "u64" ? view.getBigUint64(itemAt, true) : this.struct(element, itemAt));
    }
    return items;
  }
}
