// Text frames: the same frames as JSON objects tagged by `type`. Writing is exact (bigints
// are written as plain JSON numbers). Reading goes through JSON.parse, which rounds integers
// above 2^53 - 1, so the reader refuses any integer that is not exact rather than hand out
// a wrong id: deployments whose ids can exceed 2^53 must use binary frames
// (wire/PROTOCOL.md, "JavaScript and 64-bit ids").

import type { ClientFrame, ServerFrame } from "./frames.js";
import { CLIENT_FRAMES, SERVER_FRAMES } from "./layout.js";
import type { FieldType, FrameSet, StructLayout } from "./layout.js";
import { ErrorCode } from "./protocol.js";
import { WireError, checkedLayout, utf8 } from "./check.js";

export function clientFrameToJson(frame: ClientFrame): string {
  return toJson(CLIENT_FRAMES, frame);
}

export function serverFrameFromJson(text: string): ServerFrame {
  return fromJson(SERVER_FRAMES, text) as ServerFrame;
}

/** The server's direction, for mock servers and tests. */
export function serverFrameToJson(frame: ServerFrame): string {
  return toJson(SERVER_FRAMES, frame);
}

/** The client's direction, for mock servers and tests. */
export function clientFrameFromJson(text: string): ClientFrame {
  return fromJson(CLIENT_FRAMES, text) as ClientFrame;
}

type Fields = Record<string, unknown>;

function toJson(set: FrameSet, frame: { type: string }): string {
  const layout = checkedLayout(set, frame);
  const value = frame as unknown as Fields;
  const fields = layout.fields
    .filter(([name, type]) => !leftOut(type, value[name]))
    .map(([name, type]) => `"${name}":${jsonValue(type, value[name])}`);
  const text = `{"type":${JSON.stringify(frame.type)},${fields.join(",")}}`;
  const size = utf8.encode(text).length;
  if (size > set.maxBytes) {
    throw new WireError(ErrorCode.TOO_LARGE, `frame is ${size} bytes of JSON, the limit is ${set.maxBytes}`);
  }
  return text;
}

function jsonStruct(layout: StructLayout, value: Fields): string {
  const fields = layout.fields.filter(([name, type]) => !leftOut(type, value[name]));
  return `{${fields.map(([name, type]) => `"${name}":${jsonValue(type, value[name])}`).join(",")}}`;
}

/** Whether JSON leaves this field out: an unset optional, or a field at its default. */
function leftOut(type: FieldType, value: unknown): boolean {
  if (type === "omittable_u64") return value === undefined || value === null;
  if (type === "defaulted_u64") return value === 0n;
  return typeof type === "object" && "enum" in type && type.omitted !== undefined && value === type.omitted;
}

function jsonValue(type: FieldType, value: unknown): string {
  if (typeof type === "string") return value === null ? "null" : String(value);
  if (!("list" in type)) return JSON.stringify(value);
  const element = type.list;
  const items = (value as unknown[]).map((item) =>
    element === "u64" ? String(item) : jsonStruct(element, item as Fields),
  );
  return `[${items.join(",")}]`;
}

function fromJson(set: FrameSet, text: string): { type: string } {
  const size = utf8.encode(text).length;
  if (size > set.maxBytes) {
    throw new WireError(ErrorCode.TOO_LARGE, `frame is ${size} bytes of JSON, the limit is ${set.maxBytes}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new WireError(ErrorCode.MALFORMED_FRAME, `malformed JSON frame: ${(error as Error).message}`);
  }
  const object = asObject(parsed, "frame");
  const type = object["type"];
  const layout = typeof type === "string" ? set.byType.get(type) : undefined;
  if (layout === undefined) throw new WireError(ErrorCode.MALFORMED_FRAME, `unknown frame type ${JSON.stringify(type)}`);
  return { type: type as string, ...readStruct(layout, object, type as string) };
}

function malformed(path: string, what: string): WireError {
  return new WireError(ErrorCode.MALFORMED_FRAME, `malformed JSON frame: ${path} ${what}`);
}

function asObject(value: unknown, path: string): Fields {
  if (typeof value !== "object" || value === null || Array.isArray(value)) throw malformed(path, "is not an object");
  return value as Fields;
}

function readStruct(layout: StructLayout, object: Fields, path: string): Fields {
  const value: Fields = {};
  for (const [name, type] of layout.fields) {
    const field = readValue(type, object[name], `${path}.${name}`);
    if (field !== undefined) value[name] = field;
  }
  return value;
}

function readValue(type: FieldType, value: unknown, path: string): unknown {
  switch (type) {
    case "u16":
    case "u32":
      if (!Number.isInteger(value) || (value as number) < 0) throw malformed(path, "is not an unsigned integer");
      return value;
    case "u64":
      return exactU64(value, path);
    case "option_u64":
      return value === null || value === undefined ? null : exactU64(value, path);
    case "omittable_u64":
      return value === null || value === undefined ? undefined : exactU64(value, path);
    case "defaulted_u64":
      return value === undefined ? 0n : exactU64(value, path);
    case "bool":
      if (typeof value !== "boolean") throw malformed(path, "is not a boolean");
      return value;
  }
  if ("enum" in type) {
    if (value === undefined && type.omitted !== undefined) return type.omitted;
    if (!type.enum.includes(value as string)) throw malformed(path, `is not one of ${type.enum.join(", ")}`);
    return value;
  }
  if ("string" in type) {
    if (typeof value !== "string") throw malformed(path, "is not a string");
    return value;
  }
  if (!Array.isArray(value)) throw malformed(path, "is not an array");
  if (value.length > type.max) throw malformed(path, `has more than ${type.max} items`);
  const element = type.list;
  return value.map((item, i) =>
    element === "u64" ? exactU64(item, `${path}[${i}]`) : readStruct(element, asObject(item, path), `${path}[${i}]`),
  );
}

function exactU64(value: unknown, path: string): bigint {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0) {
    throw malformed(path, "is not an unsigned integer");
  }
  if (!Number.isSafeInteger(value)) {
    throw malformed(path, "is above 2^53 - 1 and cannot be read exactly from JSON; use binary frames");
  }
  return BigInt(value);
}
