// Types of @switchboard/client/webchat, the embeddable web-chat widget.
import type { ActionInfo, ConnectResult, SwitchboardClient, SwitchboardClientOptions } from "./index.js";

export interface PreEngagementField {
  /** The formData key, and the control's name. */
  name: string;
  label?: string;
  type?: "text" | "email" | "tel" | "textarea";
  required?: boolean;
  autocomplete?: string;
  /** Also sent as the chat's first message. */
  sendAsMessage?: boolean;
}

export interface PreEngagementForm {
  intro?: string;
  submitLabel?: string;
  fields?: PreEngagementField[];
}

/** CSS values for the widget's custom properties. */
export interface WebChatTheme {
  accent?: string;
  accentText?: string;
  background?: string;
  surface?: string;
  text?: string;
  mutedText?: string;
  border?: string;
  danger?: string;
  font?: string;
  fontSize?: string;
  radius?: string;
  offset?: string;
  zIndex?: string | number;
  width?: string;
  height?: string;
}

export interface WebChatOptions {
  /** The broker's WebSocket URL; from /webchat/v1/webchat.js it defaults to that broker. */
  url?: string;
  /** A customer JWT (or a function returning one) for signed-in customers; omit for anonymous. */
  token?: SwitchboardClientOptions["token"];
  brand?: { name?: string };
  theme?: WebChatTheme;
  position?: "bottom-right" | "bottom-left";
  /** Any of DEFAULT_STRINGS' keys; `{name}` placeholders are filled in. */
  strings?: Partial<Record<keyof typeof DEFAULT_STRINGS, string>>;
  /** `false`: a Start chat button only. */
  preEngagementForm?: PreEngagementForm | false;
  /** The queue's name (without `queue:`). */
  queue?: string;
  /** Where to mount (default document.body). */
  container?: Element;
  storage?: SwitchboardClientOptions["storage"];
  storageKey?: string;
  requestTimeout?: number;
  reconnect?: SwitchboardClientOptions["reconnect"];
  /** Retries of a first connection that fails (ms). */
  retry?: { initialDelay?: number; maxDelay?: number };
  /** Use this client instead of making one. */
  client?: SwitchboardClient;
}

type Listener = (payload: any, resultOrCancel: any) => unknown;

export interface WebChatActions {
  invokeAction(name: string, payload?: Record<string, unknown>): Promise<any>;
  on(eventName: string, listener: Listener): () => void;
  addListener(eventName: string, listener: Listener): () => void;
  off(eventName: string, listener: Listener): void;
  removeListener(eventName: string, listener: Listener): void;
  replaceAction(name: string, impl: (payload: any, original: (payload: any) => Promise<any>) => unknown): () => void;
  registerAction(name: string, impl: (payload: any) => unknown, options?: { description?: string }): () => boolean;
}

export interface WebChatApiActions {
  triggerAction(name: string, payload?: Record<string, unknown>): Promise<any>;
  getActions(): Promise<ActionInfo[]>;
  invokeAction(name: string, payload?: Record<string, unknown>): Promise<any>;
}

export declare class WebChat {
  constructor(options?: WebChatOptions);
  readonly client: SwitchboardClient;
  readonly Actions: WebChatActions;
  readonly actions: WebChatApiActions;
  readonly root: ShadowRoot;
  readonly host: HTMLElement;
  readonly ready: Promise<ConnectResult>;
  start(): this;
  open(): void;
  minimize(): void;
  destroy(): void;
}

export declare function createWebChat(options?: WebChatOptions): WebChat;
export declare const DEFAULT_STRINGS: Readonly<Record<string, string>>;
export declare const DEFAULT_FORM: Readonly<Required<PreEngagementForm>>;
export declare const THEME_VARIABLES: Readonly<Record<keyof WebChatTheme, string>>;
