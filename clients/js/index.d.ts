// Type declarations for chinwag-client 0.1.0 (chinwag wire protocol v1, revision 2).
// Keep in sync with index.js and docs/PROTOCOL.md.

export { encode as encodeMsgpack, decode as decodeMsgpack } from './msgpack.js';

export declare const VERSION: '0.1.0';
export declare const SUBPROTOCOLS: Readonly<{ json: 'chinwag.v1.json'; msgpack: 'chinwag.v1.msgpack' }>;
export declare const ROOM_EVENT_TYPES: readonly RoomEventType[];
export declare const SERVER_FRAME_TYPES: readonly ServerFrameType[];

/** A frame id: the client generates strings; the protocol allows integers too. */
export type FrameId = string | number;

// ---- room events (section 3.1) ------------------------------------------------

export type RoomEventType = 'message' | 'edit' | 'delete' | 'reaction';

interface RoomEventBase {
  room: string;
  seq: number;
  /** Server time, ms since the epoch. */
  ts: number;
  /** The user who caused it. */
  from: string;
}

export interface Reaction {
  emoji: string;
  /** User ids, in the order they reacted. */
  users: string[];
}

/**
 * A chat message. Live, it is the message as sent; in `history`, `thread`,
 * `search_results` and `joined.history` (and when the client delivers an
 * event it fetched while resuming) it shows the current state: the latest
 * text, `edited_ts`, `deleted`, `reactions`, `replies`, `last_reply_ts`.
 */
export interface MessageFrame extends RoomEventBase {
  type: 'message';
  /** Absent once deleted. */
  text?: string;
  /** The thread root's seq. */
  reply_to?: number;
  /** Mentioned user ids, in order of first appearance. */
  mentions?: string[];
  edited_ts?: number;
  deleted?: boolean;
  reactions?: Reaction[];
  /** Thread root: replies that are not deleted. */
  replies?: number;
  last_reply_ts?: number;
}

export interface EditFrame extends RoomEventBase {
  type: 'edit';
  /** The edited message's seq. */
  target: number;
  /** The new text; absent once the message is deleted. */
  text?: string;
  mentions?: string[];
}

export interface DeleteFrame extends RoomEventBase {
  type: 'delete';
  target: number;
}

export interface ReactionFrame extends RoomEventBase {
  type: 'reaction';
  target: number;
  emoji: string;
  /** Added (true) or removed. */
  on: boolean;
}

export type RoomEvent = MessageFrame | EditFrame | DeleteFrame | ReactionFrame;

// ---- server frames (sections 2 to 4) -----------------------------------------------

export interface HelloRoom {
  room: string;
  /** Latest seq (0 if empty). */
  seq: number;
  /** The user's read marker (0 if none). */
  read: number;
  unread: number;
  mentions: number;
}

export interface Limits {
  max_text: number;
  max_frame: number;
  rate: number;
  burst: number;
}

export interface HelloFrame {
  type: 'hello';
  user: string;
  name?: string;
  node: string;
  server_time: number;
  rooms: HelloRoom[];
  limits: Limits;
}

export interface JoinedFrame {
  type: 'joined';
  id?: FrameId;
  room: string;
  seq: number;
  members: string[];
  online: string[];
  /** Member id -> display name, for members that have one. */
  names: Record<string, string>;
  history: RoomEvent[];
  more: boolean;
}

export interface LeftFrame {
  type: 'left';
  id?: FrameId;
  room: string;
}

export interface AckFrame {
  type: 'ack';
  id?: FrameId;
  room: string;
  seq: number;
  ts: number;
  /**
   * Set by the client, never by the server: the ack was lost with the
   * connection and the event was found in the room after the reconnect.
   */
  recovered?: true;
}

export interface PresenceFrame {
  type: 'presence';
  room: string;
  user: string;
  state: 'online' | 'offline';
}

export interface TypingFrame {
  type: 'typing';
  room: string;
  user: string;
  active: boolean;
}

export interface HistoryFrame {
  type: 'history';
  id?: FrameId;
  room: string;
  messages: RoomEvent[];
  more: boolean;
}

export interface ThreadFrame {
  type: 'thread';
  id?: FrameId;
  room: string;
  root: number;
  messages: MessageFrame[];
  more: boolean;
}

export interface SearchResultsFrame {
  type: 'search_results';
  id?: FrameId;
  query: string;
  messages: MessageFrame[];
  /** Absent exactly when there are no more results. */
  cursor?: string;
}

export interface RoomInfo {
  room: string;
  members: number;
  seq: number;
  /** The last event's ts (0 if none). */
  ts: number;
}

export interface RoomListFrame {
  type: 'room_list';
  id?: FrameId;
  rooms: RoomInfo[];
  cursor?: string;
}

export interface ReadFrame {
  type: 'read';
  room: string;
  seq: number;
}

export interface PresenceListFrame {
  type: 'presence_list';
  id?: FrameId;
  room: string;
  online: string[];
}

export interface TokenFrame {
  type: 'token';
  id?: FrameId;
  token: string;
  /** Expiry, seconds since the epoch. */
  exp: number;
}

export interface PongFrame {
  type: 'pong';
  id?: FrameId;
  ts: number;
}

export interface NotificationFrame {
  type: 'notification';
  kind: string;
  text: string;
  data?: unknown;
  ts: number;
}

export type ErrorCode =
  | 'bad_request' | 'invalid_room' | 'invalid_user' | 'too_long' | 'not_member' | 'forbidden'
  | 'not_found' | 'limit_reached' | 'rate_limited' | 'unavailable' | 'internal';

export interface ErrorFrame {
  type: 'error';
  id: FrameId | null;
  code: ErrorCode;
  message: string;
  retry_after_ms?: number;
}

export type ServerFrame =
  | HelloFrame | JoinedFrame | LeftFrame | AckFrame | MessageFrame | EditFrame | DeleteFrame
  | ReactionFrame | PresenceFrame | TypingFrame | HistoryFrame | ThreadFrame | SearchResultsFrame
  | RoomListFrame | ReadFrame | PresenceListFrame | TokenFrame | PongFrame | NotificationFrame
  | ErrorFrame;

export type ServerFrameType = ServerFrame['type'];

/** The server frame of a given type. */
export type FrameOf<T extends ServerFrameType> = Extract<ServerFrame, { type: T }>;

// ---- client frames (section 3) --------------------------------------------------------

export type ClientFrame =
  | { type: 'join'; id?: FrameId; room: string; since?: number }
  | { type: 'leave'; id?: FrameId; room: string }
  | { type: 'send'; id?: FrameId; room: string; text: string; reply_to?: number }
  | { type: 'dm'; id?: FrameId; to: string; text: string; reply_to?: number }
  | { type: 'edit'; id?: FrameId; room: string; seq: number; text: string }
  | { type: 'delete'; id?: FrameId; room: string; seq: number }
  | { type: 'react'; id?: FrameId; room: string; seq: number; emoji: string; on: boolean }
  | { type: 'typing'; id?: FrameId; room: string; active: boolean }
  | { type: 'history'; id?: FrameId; room: string; before?: number; after?: number; limit?: number }
  | { type: 'thread'; id?: FrameId; room: string; root: number; after?: number; limit?: number }
  | { type: 'search'; id?: FrameId; query: string; room?: string; cursor?: string; limit?: number }
  | { type: 'rooms'; id?: FrameId; prefix?: string; cursor?: string; limit?: number }
  | { type: 'read'; id?: FrameId; room: string; seq: number }
  | { type: 'presence'; id?: FrameId; room: string }
  | { type: 'refresh'; id?: FrameId }
  | { type: 'ping'; id?: FrameId };

export type ClientFrameType = ClientFrame['type'];

/** What `request()` resolves with for each client frame. */
export interface ReplyMap {
  join: JoinedFrame;
  leave: LeftFrame;
  send: AckFrame;
  dm: AckFrame;
  edit: AckFrame;
  delete: AckFrame;
  react: AckFrame;
  typing: void;
  history: HistoryFrame;
  thread: ThreadFrame;
  search: SearchResultsFrame;
  rooms: RoomListFrame;
  read: void;
  presence: PresenceListFrame;
  refresh: TokenFrame;
  ping: PongFrame;
}

// ---- lifecycle events ----------------------------------------------------------------------

export interface OpenEvent {
  hello: HelloFrame;
  /** False for the first connection, true after a reconnect. */
  reconnected: boolean;
}

export interface CloseEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  /** Set when close() was called. */
  byClient?: true;
}

export interface ReconnectingEvent {
  /** 1 for the first retry after a drop. */
  attempt: number;
  delayMs: number;
  code: number;
  reason: string;
}

export interface AuthErrorEvent {
  /**
   * 4001 (token revoked or expired while connected), 401 (the server refused
   * the token at the upgrade, found out with an HTTP call), or
   * 'token_expired' (the token's exp has passed; no connection was tried).
   */
  code: 4001 | 401 | 'token_expired';
  reason: string;
}

export interface ProtocolErrorEvent {
  reason: string;
}

/** Every event `on()` accepts, with its payload. */
export interface ClientEventMap {
  hello: HelloFrame;
  joined: JoinedFrame;
  left: LeftFrame;
  ack: AckFrame;
  message: MessageFrame;
  edit: EditFrame;
  delete: DeleteFrame;
  reaction: ReactionFrame;
  presence: PresenceFrame;
  typing: TypingFrame;
  history: HistoryFrame;
  thread: ThreadFrame;
  search_results: SearchResultsFrame;
  room_list: RoomListFrame;
  read: ReadFrame;
  presence_list: PresenceListFrame;
  /** A new token (from the automatic refresh or refresh()): store it. */
  token: TokenFrame;
  pong: PongFrame;
  notification: NotificationFrame;
  /** An error frame that answers no pending request of this client. */
  error: ErrorFrame;
  /** Connected and caught up (after `hello` and the resume of every room). */
  open: OpenEvent;
  close: CloseEvent;
  reconnecting: ReconnectingEvent;
  auth_error: AuthErrorEvent;
  /** A frame that could not be decoded. */
  protocol_error: ProtocolErrorEvent;
  /** Every server frame as it arrives, before any other handling (room events not deduplicated). */
  frame: ServerFrame;
}

export type ClientEventType = keyof ClientEventMap;

/**
 * The second argument of every listener of a room event (`message`, `edit`,
 * `delete`, `reaction`); undefined for other events.
 */
export type RoomEventMeta =
  /** The event arrived live, as it happened. */
  | { resumed: false }
  /**
   * Fetched while catching up (`history` after a reconnect or a gap, `join`
   * with `since`): a `message` shows its current state, which already counts
   * every room event up to `asOf` (edits, reactions, deletion, replies).
   */
  | { resumed: true; asOf: number };

export type ClientListener<K extends ClientEventType> = (payload: ClientEventMap[K], meta?: RoomEventMeta) => void;

// ---- the client ------------------------------------------------------------------------------

/** The WebSocket constructor the client needs (the WHATWG one, or a compatible one such as `ws`). */
export interface WebSocketLike {
  readonly protocol: string;
  readonly readyState: number;
  binaryType: any;
  /** The client sets these four handlers (open; message with `data`; close with `code`, `reason`, `wasClean`; error). */
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: any) => any) | null;
  onclose: ((ev: any) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: any): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ReconnectOptions {
  /** First delay, ms (default 500). */
  initialDelayMs?: number;
  /** Largest delay, ms (default 15000). */
  maxDelayMs?: number;
  /** Growth per attempt (default 2). */
  factor?: number;
  /** The delay is reduced by up to this fraction at random (default 0.5). */
  jitter?: number;
}

export interface ClientOptions {
  /** `ws(s)://host:port/ws`, or `http(s)://host:port` (then `/ws` is added). */
  url: string;
  /** An HS256 JWT (PROTOCOL.md section 2); sent as `?token=`. Required unless `user` is given. */
  token?: string;
  /** Open mode only (a server started with `--open`): the user id, sent as `?user=`, when there is no token. */
  user?: string;
  /** Default 'json'. */
  encoding?: 'json' | 'msgpack';
  /** A WebSocket constructor for runtimes without a global one (Node < 22). */
  WebSocket?: WebSocketConstructor;
  /** A fetch for the HTTP helpers and the auth probe (default: the global one). */
  fetch?: (input: string, init?: { method?: string; headers?: Record<string, string>; body?: string }) => Promise<{ ok: boolean; status: number; text(): Promise<string>; json(): Promise<any>; body?: any }>;
  /** Reconnect settings, or false to never reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Refresh the token once less than half of its lifetime is left (default true). */
  refresh?: boolean;
  /** Last seqs seen, from a previous session's positions(): those rooms resume from there. */
  since?: Record<string, number>;
  /** Ping after this long without a frame, ms; 0 turns it off (default 30000). */
  heartbeatMs?: number;
  /** Reconnect when the ping gets no answer within this, ms (default 10000). */
  heartbeatTimeoutMs?: number;
  /** Send a frame refused with rate_limited again after retry_after_ms (default true). */
  retryRateLimited?: boolean;
  /** After a failed upgrade, ask the HTTP API whether the token is refused (default true). */
  probeAuth?: boolean;
}

export interface ClientStats {
  /** `hello`s received. */
  connects: number;
  /** Reconnects scheduled. */
  reconnects: number;
  /** Event frames sent again after a reconnect (the event was not in the room). */
  resent: number;
  /** Event frames whose lost ack was recovered from the room after a reconnect. */
  recovered: number;
  /** Room events fetched with `history` while resuming. */
  resumedEvents: number;
  /** Room events dropped as already delivered. */
  duplicatesDropped: number;
}

export type ClientState = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

/**
 * Client-side error codes (besides the server's ErrorCode): 'closed' (close()
 * was called), 'auth' (the token was refused or revoked), 'disconnected'
 * (reconnect is off and the connection closed), 'no_websocket', 'no_fetch',
 * 'bad_request' (a frame that cannot be encoded), 'bad_token' (decodeJwt);
 * HTTP errors carry the body's `error` and `status`.
 */
export declare class ChinwagError extends Error {
  constructor(code: string, message: string, extra?: object);
  readonly name: 'ChinwagError';
  /** The protocol's error code, or one of the client's. */
  readonly code: ErrorCode | 'closed' | 'auth' | 'disconnected' | 'no_websocket' | 'no_fetch' | 'bad_token' | string;
  /** The error frame, for server errors (and the frame sent, for client errors of a request). */
  readonly frame?: ErrorFrame | ClientFrame;
  /** rate_limited: how long to wait. */
  readonly retryAfterMs?: number;
  /**
   * On 'closed', 'auth', 'disconnected': the frame had been written and no
   * answer came, so the server may or may not have acted on it.
   */
  readonly inDoubt?: boolean;
  /** HTTP helpers: the status. */
  readonly status?: number;
  /** 'auth' from connect(): the AuthErrorEvent code. */
  readonly closeCode?: AuthErrorEvent['code'];
}

export declare class ChinwagClient {
  constructor(options: ClientOptions);

  readonly state: ClientState;
  /** The current token (the latest one from refresh); null in open mode. */
  readonly token: string | null;
  /** The user id from the last hello (null before it). */
  readonly user: string | null;
  readonly hello: HelloFrame | null;
  readonly encoding: 'json' | 'msgpack';
  /** The subprotocol the server chose for the current connection ('' when none). */
  readonly protocol: string;
  /** `http(s)://host:port` of the server. */
  readonly httpBase: string;
  readonly stats: ClientStats;

  /** The last seq of `room` delivered to the app, if the room is followed. */
  lastSeq(room: string): number | undefined;
  /** Every followed room's last delivered seq: pass it as `since` to resume in a later session. */
  positions(): Record<string, number>;
  /** A token for the next connections (after an auth_error, say; then call connect()). */
  setToken(token: string): void;

  on<K extends ClientEventType>(type: K, fn: ClientListener<K>): () => void;
  off<K extends ClientEventType>(type: K, fn: ClientListener<K>): void;
  once<K extends ClientEventType>(type: K, fn: ClientListener<K>): () => void;
  once<K extends ClientEventType>(type: K): Promise<ClientEventMap[K]>;

  /** Connects, and keeps reconnecting until close(); resolves once open and caught up. */
  connect(): Promise<HelloFrame>;
  /** Closes for good (until connect()); pending requests reject with code 'closed'. */
  close(code?: number, reason?: string): void;
  /** While waiting to reconnect: tries at once, with the backoff started afresh. */
  retryNow(): void;

  /** Any client frame; resolves with its reply (typing, read: once written). */
  request<K extends ClientFrameType>(frame: { type: K } & Omit<Extract<ClientFrame, { type: K }>, 'id'>): Promise<ReplyMap[K]>;

  join(room: string, opts?: { since?: number }): Promise<JoinedFrame>;
  leave(room: string): Promise<LeftFrame>;
  /** Resolves once durable; retried across reconnects, delivered at most once (README). */
  send(room: string, text: string, opts?: { replyTo?: number }): Promise<AckFrame>;
  dm(to: string, text: string, opts?: { replyTo?: number }): Promise<AckFrame>;
  edit(room: string, seq: number, text: string): Promise<AckFrame>;
  delete(room: string, seq: number): Promise<AckFrame>;
  react(room: string, seq: number, emoji: string, on?: boolean): Promise<AckFrame>;
  /** No reply: resolves once written; dropped (resolved) while not connected. */
  typing(room: string, active?: boolean): Promise<void>;
  history(room: string, opts?: { before?: number; after?: number; limit?: number }): Promise<HistoryFrame>;
  thread(room: string, root: number, opts?: { after?: number; limit?: number }): Promise<ThreadFrame>;
  search(query: string, opts?: { room?: string; cursor?: string; limit?: number }): Promise<SearchResultsFrame>;
  rooms(opts?: { prefix?: string; cursor?: string; limit?: number }): Promise<RoomListFrame>;
  /** No reply: resolves once written. */
  read(room: string, seq: number): Promise<void>;
  presence(room: string): Promise<PresenceListFrame>;
  refresh(): Promise<TokenFrame>;
  ping(): Promise<PongFrame>;

  /** The HTTP API (section 5) with the current token: the parsed JSON body. */
  http<T = any>(method: string, path: string, body?: unknown): Promise<T>;
  /** GET /health. */
  health(): Promise<{ status: 'ok' | 'degraded'; node: string; redis: 'ok' | 'down' | 'off'; storage: 'ok' | 'down'; connections: number; uptime_s: number }>;
}

/** The payload of a JWT, not verified. */
export declare function decodeJwt(token: string): { sub?: string; exp?: number; iat?: number; nbf?: number; name?: string; admin?: boolean; jti?: string; [claim: string]: unknown };

/** `dm:<a>:<b>` with a < b. */
export declare function dmRoom(a: string, b: string): string;

export default ChinwagClient;
