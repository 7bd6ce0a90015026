/**
 * @switchboard/client: the JavaScript SDK of the Switchboard chat broker.
 * Works in browsers and Node >= 20 (on Node 20, run with
 * --experimental-websocket or pass a `WebSocket` option).
 */
export { SwitchboardClient, CloseCodes, PUSH_EVENTS } from "./client.js";
export { Actions, BUILTIN_ACTIONS, listenerName } from "./actions.js";
export { SwitchboardError, LocalErrorCodes } from "./errors.js";
export { MemoryStorage, defaultStorage } from "./storage.js";
export { backoffDelay, DEFAULT_RECONNECT } from "./backoff.js";
export { jsonCodec, msgpackCodec, loadCodec, PROTOCOL_JSON, PROTOCOL_MSGPACK } from "./codec.js";
