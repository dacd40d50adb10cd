// Checks a frame against its layout before it is encoded: types, integer ranges and the
// protocol's limits. A frame the gateway would refuse fails here, at the caller, instead of
// coming back as an error frame (or, if resent by the outbox, coming back forever).

import { ErrorCode, U64_MAX } from "./protocol.js";
import type { FieldType, FrameLayout, FrameSet, StructLayout } from "./layout.js";

/** Why a frame could not be encoded or decoded; `code` is the protocol's error code. */
export class WireError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
    this.name = "WireError";
  }
}

export const utf8 = new TextEncoder();

/** The layout of `frame`, after checking every field of it. */
export function checkedLayout(set: FrameSet, frame: { type: string }): FrameLayout {
  const layout = set.byType.get(frame.type);
  if (layout === undefined) {
    throw new WireError(ErrorCode.UNKNOWN_KIND, `no frame of type ${JSON.stringify(frame.type)}`);
  }
  const value = frame as unknown as Record<string, unknown>;
  checkStruct(layout, value, frame.type);
  const broken = layout.check?.(value);
  if (broken !== undefined) throw new WireError(ErrorCode.LIMIT_EXCEEDED, `${frame.type}: ${broken}`);
  return layout;
}

function checkStruct(layout: StructLayout, value: Record<string, unknown>, path: string): void {
  for (const [name, type] of layout.fields) checkField(type, value[name], `${path}.${name}`);
}

function checkField(type: FieldType, value: unknown, path: string): void {
  const malformed = (what: string) => new WireError(ErrorCode.MALFORMED_FRAME, `${path} ${what}`);
  switch (type) {
    case "u16":
    case "u32": {
      const max = type === "u16" ? 0xffff : 0xffff_ffff;
      if (!Number.isInteger(value) || (value as number) < 0 || (value as number) > max) {
        throw malformed(`must be an integer from 0 to ${max}`);
      }
      return;
    }
    case "u64":
    case "defaulted_u64":
      checkU64(value, malformed);
      return;
    case "option_u64":
      if (value !== null) checkU64(value, malformed);
      return;
    case "omittable_u64":
      if (value !== null && value !== undefined) checkU64(value, malformed);
      return;
    case "bool":
      if (typeof value !== "boolean") throw malformed("must be a boolean");
      return;
  }
  if ("enum" in type) {
    if (!type.enum.includes(value as string)) throw malformed(`must be one of ${type.enum.join(", ")}`);
  } else if ("string" in type) {
    if (typeof value !== "string") throw malformed("must be a string");
    const bytes = utf8.encode(value).length;
    if (bytes > type.string) {
      throw new WireError(ErrorCode.LIMIT_EXCEEDED, `${path} is ${bytes} bytes, the limit is ${type.string}`);
    }
    if (type.noNul && value.includes("\u0000")) throw malformed("may not contain U+0000");
  } else {
    if (!Array.isArray(value)) throw malformed("must be an array");
    if (value.length > type.max) {
      throw new WireError(ErrorCode.LIMIT_EXCEEDED, `${path} has ${value.length} items, the limit is ${type.max}`);
    }
    const element = type.list;
    value.forEach((item, i) => {
      if (element === "u64") checkU64(item, malformed);
      else checkStruct(element, item as Record<string, unknown>, `${path}[${i}]`);
    });
  }
}

function checkU64(value: unknown, malformed: (what: string) => WireError): void {
  if (typeof value !== "bigint" || value < 0n || value > U64_MAX) {
    throw malformed("must be a bigint from 0 to 2^64 - 1");
  }
}
