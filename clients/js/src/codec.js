import { SwitchboardError } from "./errors.js";

export const PROTOCOL_JSON = "switchboard.v1.json";
export const PROTOCOL_MSGPACK = "switchboard.v1.msgpack";

const textDecoder = new TextDecoder();

/** JSON over text frames. Needs nothing: this is what the demo pages use. */
export const jsonCodec = Object.freeze({
  name: "json",
  protocol: PROTOCOL_JSON,
  encode: (frame) => JSON.stringify(frame),
  decode: (data) => JSON.parse(typeof data === "string" ? data : textDecoder.decode(data)),
});

/**
 * Wraps a MessagePack implementation (`{encode, decode}`, e.g. the module
 * namespace of `@msgpack/msgpack`) as a codec for binary frames.
 */
export function msgpackCodec(impl) {
  if (!impl || typeof impl.encode !== "function" || typeof impl.decode !== "function") {
    throw new TypeError("a MessagePack codec needs encode() and decode()");
  }
  return Object.freeze({
    name: "msgpack",
    protocol: PROTOCOL_MSGPACK,
    encode: (frame) => impl.encode(frame, { ignoreUndefined: true }),
    decode: (data) => impl.decode(data instanceof ArrayBuffer ? new Uint8Array(data) : data),
  });
}

/**
 * The codec for `encoding`. The MessagePack package is imported only when
 * `encoding: "msgpack"` is chosen and no codec was injected, so the JSON path
 * works in a browser with no bare imports.
 */
export async function loadCodec(encoding = "json", injected) {
  if (encoding === "json") return jsonCodec;
  if (encoding !== "msgpack") {
    throw new SwitchboardError("unsupported", `unknown encoding ${JSON.stringify(encoding)} (use "json" or "msgpack")`);
  }
  if (injected) return msgpackCodec(injected);
  let impl;
  try {
    impl = await import("@msgpack/msgpack");
  } catch (cause) {
    const err = new SwitchboardError(
      "unsupported",
      'encoding "msgpack" needs the "@msgpack/msgpack" package (npm install @msgpack/msgpack) or a `codec` option',
    );
    err.cause = cause;
    throw err;
  }
  return msgpackCodec(impl);
}
