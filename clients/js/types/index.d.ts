// Type definitions for @switchboard/client (hand-written; the package has no build step).

// ------------------------------------------------------------------ errors

/** Error codes of the wire contract (version 1). */
export type ContractErrorCode =
  | "bad_request"
  | "not_connected"
  | "unauthorized"
  | "forbidden"
  | "unknown_action"
  | "not_found"
  | "not_a_member"
  | "already_engaged"
  | "no_engagement"
  | "outside_business_hours"
  | "too_large"
  | "rate_limited"
  | "rejected"
  | "internal";

/** Codes the SDK uses itself when the broker gave no answer. */
export type LocalErrorCode = "timeout" | "connection_lost" | "connection_failed" | "closed" | "unsupported";

export type ErrorCode = ContractErrorCode | LocalErrorCode;

export declare class SwitchboardError extends Error {
  constructor(code: string, message?: string, details?: Record<string, unknown>);
  readonly name: "SwitchboardError";
  /** The contract's error code, or a LocalErrorCode. */
  code: ErrorCode | (string & {});
  /** The action whose promise this error rejected, when known. */
  action?: string;
  /** Extra fields of the broker's error (e.g. `opensAt`, `channelSid`), also copied onto the error. */
  details: Record<string, unknown>;
  /** `outside_business_hours`: when the business opens next (RFC 3339). */
  opensAt?: string;
  /** `already_engaged`: the current engagement's channel. */
  channelSid?: string;
  /** `"client"` when a before-listener cancelled the action (code `rejected`). */
  source?: "client";
  /** WebSocket close code, for connection errors. */
  closeCode?: number;
  closeReason?: string;
  static fromReply(error: { code: string; message?: string; [k: string]: unknown }, action?: string): SwitchboardError;
}

export declare const LocalErrorCodes: Readonly<{
  TIMEOUT: "timeout";
  CONNECTION_LOST: "connection_lost";
  CONNECTION_FAILED: "connection_failed";
  CLOSED: "closed";
  UNSUPPORTED: "unsupported";
}>;

// ------------------------------------------------------------------ wire types

export type Role = "customer" | "agent" | "service";

export interface Engagement {
  channelSid: string;
  startedAt: string;
}

export interface WidgetState {
  expanded: boolean;
}

export interface ConnectPayload {
  token?: string;
  resumeToken?: string;
  /** Last index seen per channel (sent by the SDK on reconnect when the broker supports recovery). */
  recover?: Record<string, number>;
}

export interface ConnectResult {
  sessionId: string;
  identity: string;
  role: Role;
  /** Anonymous customers only. */
  resumeToken?: string;
  /**
   * Brokers with the engagement extension add `members` (sorted by identity)
   * and `lastIndex` (-1 before the first message); the SDK moves them into
   * `channel(channelSid)`.
   */
  engagement: (Engagement & { members?: Member[]; lastIndex?: number }) | null;
  widget: WidgetState;
  /** Draft by channel sid. */
  inputText: Record<string, string>;
  /** Action names this session may call. */
  actions: string[];
  /** With recovery: per channel, whether history reached back far enough. */
  recovered?: Record<string, boolean>;
}

export interface ActionInfo {
  name: string;
  /** `client` marks actions registered in this client with `actions.register`. */
  kind: "builtin" | "custom" | "client";
  description?: string;
  payload?: Record<string, unknown>;
}

export interface Member {
  identity: string;
  role: Role;
}

export interface QueuedEngagement {
  /** The queue (`queue:<name>`) it was seen in, when known (kept by the SDK, not sent by the broker). */
  queue?: string | null;
  channelSid: string;
  identity: string;
  formData: Record<string, unknown>;
  startedAt: string;
  /** Who is in it now (brokers with the queue extension); waiting = no agent or service. */
  members?: Member[];
}

export interface Message {
  channelSid: string;
  index: number;
  author: string;
  authorRole: Role;
  body: string;
  attributes: Record<string, unknown> | null;
  dateCreated: string;
}

/** Payload and result of every action of the contract. */
export interface ActionMap {
  GetActions: { payload: Record<string, never> | undefined; result: { actions: ActionInfo[] } };
  TriggerAction: { payload: { name: string; payload?: Record<string, unknown> }; result: any };
  StartEngagement: { payload: { formData?: Record<string, unknown>; queue?: string } | undefined; result: { channelSid: string } };
  RestartEngagement: { payload: Record<string, never> | undefined; result: { channelSid: string } };
  ToggleChatVisibility: { payload: Record<string, never> | undefined; result: WidgetState };
  MinimizeChat: { payload: Record<string, never> | undefined; result: { expanded: false } };
  SendMessage: {
    payload: { channelSid: string; body: string; messageAttributes?: Record<string, unknown> };
    result: { channelSid: string; index: number; dateCreated: string };
  };
  SetInputText: { payload: { channelSid: string; body: string }; result: Record<string, never> };
  SendTyping: { payload: { channelSid: string }; result: Record<string, never> };
  JoinChannel: { payload: { channelSid: string }; result: { channelSid: string; members: Member[]; lastIndex: number } };
  LeaveChannel: { payload: { channelSid: string }; result: Record<string, never> };
  Subscribe: {
    payload: { channel: string; after?: number };
    result: { channel: string; engagements?: QueuedEngagement[]; recovered?: boolean };
  };
  Unsubscribe: { payload: { channel: string }; result: Record<string, never> };
  GetMessages: {
    payload: { channelSid: string; before?: number; limit?: number };
    result: { messages: Message[]; hasMore: boolean };
  };
  /** Agents (members of the channel) and services: ends the engagement for everyone in it. */
  EndEngagement: { payload: { channelSid: string; reason?: string }; result: Record<string, never> };
}

export type BuiltinActionName = keyof ActionMap;

// ------------------------------------------------------------------ pushes and client events

export interface PushEvents {
  messageAdded: Message;
  engagementStarted: { channelSid: string; identity: string; formData?: Record<string, unknown>; startedAt?: string };
  engagementEnded: { channelSid: string; reason: string };
  engagementRestarted: { channelSid: string };
  memberJoined: { channelSid: string; identity: string; role: Role };
  memberLeft: { channelSid: string; identity: string; reason: "left" | "restart" | (string & {}) };
  /** `local: true` when the SDK ended it itself because the connection dropped. */
  typingStarted: { channelSid: string; identity: string };
  typingEnded: { channelSid: string; identity: string; local?: true };
  widgetStateChanged: WidgetState;
  inputTextSet: { channelSid: string; body: string };
  /** To queue subscribers: the members of an open engagement of the queue changed. */
  engagementUpdated: { channelSid: string; members: Member[] };
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ClientEvents extends PushEvents {
  /** Every push, as `{event, data}`. */
  push: { event: string; data: any };
  /** After the first connect and after every reconnect: the Connect result. */
  connected: ConnectResult;
  reconnected: ConnectResult;
  disconnected: { code: number | null; reason: string; willReconnect: boolean; byClient?: true; error?: SwitchboardError };
  reconnecting: { attempt: number; delay: number; code?: number };
  connectionStateChanged: ConnectionState;
  /** Any change to the kept state (engagement, widget, drafts, channels, queue). */
  stateChanged: ClientState;
  /** A `messageAdded` skipped indices (messages were missed, e.g. reconnect without recovery). */
  gap: { channelSid: string; from: number; to: number };
  /** The broker could not recover a channel: reload it with `GetMessages`. */
  recoveryFailed: { channelSid: string; lastIndex: number | null };
  /** The stored resume token was refused; the client became a new anonymous customer. */
  identityReset: { reason: string };
  /** Errors that belong to no promise (undecodable frames, failed re-subscriptions, throwing listeners). */
  error: unknown;
}

export interface ChannelState {
  channelSid: string;
  /** Highest message index received, or null. */
  lastIndex: number | null;
  member: boolean;
  subscribed: boolean;
  ended: boolean;
  members: Member[];
  /** Identities typing now. */
  typing: string[];
}

export interface ClientState {
  connectionState: ConnectionState;
  sessionId: string | null;
  identity: string | null;
  role: Role | null;
  resumeToken: string | null;
  engagement: Engagement | null;
  widget: WidgetState;
  inputText: Record<string, string>;
  serverActions: string[];
  supportsRecovery: boolean;
  subscriptions: string[];
  queue: QueuedEngagement[];
  channels: ChannelState[];
}

// ------------------------------------------------------------------ actions framework

export type BeforeListener<P = any> = (
  payload: P,
  cancel: (reason?: string) => void,
) => void | false | P | Promise<void | false | P>;

export type AfterListener<P = any, R = any> = (payload: P, result: R) => void | Promise<void>;

type BeforeNames = { [K in BuiltinActionName as `before${K}`]: BeforeListener<NonNullable<ActionMap[K]["payload"]>> };
type AfterNames = {
  [K in BuiltinActionName as `after${K}`]: AfterListener<NonNullable<ActionMap[K]["payload"]>, ActionMap[K]["result"]>;
};
export type ListenerMap = BeforeNames & AfterNames;

export declare class Actions {
  /** Adds a before/after listener; returns a function that removes it. */
  addListener<K extends keyof ListenerMap>(eventName: K, listener: ListenerMap[K]): () => void;
  addListener(eventName: `before${string}`, listener: BeforeListener): () => void;
  addListener(eventName: `after${string}`, listener: AfterListener): () => void;
  removeListener(eventName: string, listener: (...args: any[]) => any): void;
  removeAllListeners(eventName?: string): void;

  /** Replaces an action's implementation; `original` runs the previous one. Returns a restore function. */
  replace<K extends BuiltinActionName>(
    name: K,
    impl: (
      payload: NonNullable<ActionMap[K]["payload"]>,
      original: (payload: NonNullable<ActionMap[K]["payload"]>) => Promise<ActionMap[K]["result"]>,
    ) => ActionMap[K]["result"] | Promise<ActionMap[K]["result"]>,
  ): () => void;
  replace(name: string, impl: (payload: any, original: (payload: any) => Promise<any>) => any): () => void;

  /** Registers a client-side custom action. Returns a function that unregisters it. */
  register<P = any, R = any>(name: string, impl: (payload: P) => R | Promise<R>, options?: { description?: string }): () => void;
  unregister(name: string): boolean;
  has(name: string): boolean;

  /** Runs an action through listeners and its implementation. Rejects with a SwitchboardError. */
  invoke<K extends BuiltinActionName>(name: K, payload?: ActionMap[K]["payload"]): Promise<ActionMap[K]["result"]>;
  invoke<R = any>(name: string, payload?: Record<string, unknown>): Promise<R>;

  /** Runs a configured custom action by reference name (sends TriggerAction). */
  trigger<R = any>(referenceName: string, payload?: Record<string, unknown>): Promise<R>;

  /** GetActions, plus the client-registered actions (`kind: "client"`). */
  list(): Promise<ActionInfo[]>;
}

export declare const BUILTIN_ACTIONS: readonly BuiltinActionName[];
export declare function listenerName(phase: "before" | "after", action: string): string;

// ------------------------------------------------------------------ client

/** Anything shaped like Web Storage; methods may return promises. */
export interface StorageLike {
  getItem(key: string): string | null | Promise<string | null>;
  setItem(key: string, value: string): void | Promise<void>;
  removeItem(key: string): void | Promise<void>;
}

export declare class MemoryStorage implements StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
  clear(): void;
}
export declare function defaultStorage(): StorageLike;

export interface ReconnectPolicy {
  /** ms before the first attempt (default 500). */
  initialDelay?: number;
  /** ms cap (default 30000). */
  maxDelay?: number;
  /** growth per attempt (default 2). */
  factor?: number;
  /** fraction of the delay randomised away, 0..1 (default 0.5). */
  jitter?: number;
  /** attempts in a row before giving up (default Infinity). */
  maxAttempts?: number;
  /** minimum delay after close code 4029 (default 5000). */
  rateLimitedDelay?: number;
}

export interface Codec {
  encode(value: unknown): Uint8Array | string;
  decode(data: ArrayBuffer | Uint8Array | string): unknown;
}

export interface SwitchboardClientOptions {
  /** WebSocket URL of the broker, e.g. `ws://127.0.0.1:8080/ws`. */
  url: string;
  /** JWT (or a function returning one, called on every (re)connect). Omit to connect as an anonymous customer. */
  token?: string | null | (() => string | null | Promise<string | null>);
  /** Resume token of an anonymous customer (defaults to the one in `storage`). */
  resumeToken?: string | null;
  /** Wire encoding (default `json`). `msgpack` loads `@msgpack/msgpack` on demand unless `codec` is given. */
  encoding?: "json" | "msgpack";
  /** A MessagePack implementation (`{encode, decode}`) for `encoding: "msgpack"`. */
  codec?: { encode(value: unknown, options?: any): Uint8Array; decode(data: Uint8Array | ArrayBuffer): unknown };
  /** Where the resume token is kept (default: localStorage in browsers, memory elsewhere); `false` for memory only. */
  storage?: StorageLike | false;
  /** Storage key of the resume token (default `switchboard:resumeToken:<url>`). */
  storageKey?: string;
  /** Reconnect policy, or `false` to never reconnect. */
  reconnect?: ReconnectPolicy | false;
  /** ms to wait for a reply before rejecting with `timeout` (default 15000). */
  requestTimeout?: number;
  /** ms to wait for the socket to open (default 10000). */
  connectTimeout?: number;
  /** A WHATWG WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: new (url: string, protocols?: string | string[]) => any;
  /** Called with every frame sent (`out`) and received (`in`), decoded. */
  trace?: (direction: "in" | "out", frame: any) => void;
}

export declare const CloseCodes: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  SHUTTING_DOWN: 4000;
  UNAUTHORIZED: 4001;
  SLOW_CONSUMER: 4008;
  TOO_LARGE: 4009;
  RATE_LIMITED: 4029;
}>;

export declare const PUSH_EVENTS: readonly (keyof PushEvents)[];

export declare class SwitchboardClient {
  constructor(options: SwitchboardClientOptions);

  readonly actions: Actions;

  /** Opens the connection and sends Connect; resolves with its result. */
  connect(): Promise<ConnectResult>;
  /** Closes for good (no reconnect). */
  close(code?: number, reason?: string): void;
  /** Forgets the stored resume token. */
  forgetIdentity(): Promise<void>;

  on<K extends keyof ClientEvents>(event: K, listener: (data: ClientEvents[K]) => void): () => void;
  on(event: string, listener: (data: any) => void): () => void;
  once<K extends keyof ClientEvents>(event: K, listener: (data: ClientEvents[K]) => void): () => void;
  once(event: string, listener: (data: any) => void): () => void;
  off(event: string, listener: (data: any) => void): void;

  readonly connectionState: ConnectionState;
  readonly connected: boolean;
  readonly sessionId: string | null;
  readonly identity: string | null;
  readonly role: Role | null;
  readonly engagement: Engagement | null;
  readonly widget: WidgetState;
  readonly inputText: Record<string, string>;
  readonly resumeToken: string | null;
  readonly serverActions: string[];
  /** True once the broker advertised GetMessages (history and gapless recovery). */
  readonly supportsRecovery: boolean;
  readonly queue: QueuedEngagement[];
  readonly subscriptions: string[];
  readonly channels: ChannelState[];
  can(action: string): boolean;
  channel(channelSid: string): ChannelState | null;
  getState(): ClientState;
}

// ------------------------------------------------------------------ helpers

export declare const DEFAULT_RECONNECT: Readonly<Required<ReconnectPolicy>>;
export declare function backoffDelay(attempt: number, policy?: ReconnectPolicy, random?: () => number): number;

export declare const PROTOCOL_JSON: "switchboard.v1.json";
export declare const PROTOCOL_MSGPACK: "switchboard.v1.msgpack";
export declare const jsonCodec: Codec & { name: "json"; protocol: typeof PROTOCOL_JSON };
export declare function msgpackCodec(impl: {
  encode(value: unknown, options?: any): Uint8Array;
  decode(data: Uint8Array): unknown;
}): Codec & { name: "msgpack"; protocol: typeof PROTOCOL_MSGPACK };
export declare function loadCodec(encoding?: "json" | "msgpack", injected?: SwitchboardClientOptions["codec"]): Promise<Codec>;
