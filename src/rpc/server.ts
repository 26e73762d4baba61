// JSON-RPC 2.0 over a unix socket: one JSON value per line, batches allowed. Framing, bounds and error
// mapping live here; the methods are plain async functions given by the daemon. Whatever a client sends,
// only that client's connection is affected.

import { createServer, createConnection, type Server, type Socket } from 'node:net'
import { chmod, rm, stat } from 'node:fs/promises'
import { JSONRPCServer, JSONRPCErrorException, createJSONRPCErrorResponse, type JSONRPCResponse } from 'json-rpc-2.0'
import { ERROR_CODES_BY_NAME, RpcErrorCode } from './errors.js'

export type RpcMethod = (params: unknown, context: { signal: AbortSignal }) => Promise<unknown>

export interface RpcServerInit {
  methods: Record<string, RpcMethod>
  maxRequestBytes?: number
  maxConnections?: number
  maxBatchLength?: number
  /** Requests processed at once per connection; reading pauses above it. */
  maxInflightPerConnection?: number
  idleTimeoutMs?: number
  /** A connection that has sent no request is closed after this long. */
  firstRequestTimeoutMs?: number
  /** Replies waiting for the client to read them; above it the connection is not read. */
  maxUnsentReplyBytes?: number
  socketMode?: number
  onError?: (message: string, fields: Record<string, unknown>) => void
}

export const DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
export const DEFAULT_MAX_RPC_CONNECTIONS = 64
export const DEFAULT_MAX_BATCH_LENGTH = 100
export const DEFAULT_MAX_INFLIGHT_PER_CONNECTION = 16
export const DEFAULT_RPC_IDLE_TIMEOUT_MS = 10 * 60_000
export const DEFAULT_FIRST_REQUEST_TIMEOUT_MS = 5_000
export const DEFAULT_MAX_UNSENT_REPLY_BYTES = 1024 * 1024

const REFUSE_LINGER_MS = 1000

interface Connection {
  socket: Socket
  lastActivityMs: number
  sentRequest: boolean
  inflight: number
  /** Complete request lines read but not yet started. */
  lines: string[]
  paused: boolean
}

export interface RpcServerStats {
  connections: Array<{ inflight: number, queuedLines: number, unsentReplyBytes: number, paused: boolean, sentRequest: boolean }>
  maxUnsentReplyBytes: number
  maxConnections: number
  evictedConnections: number
}

export class SocketInUseError extends Error {
  override name = 'SocketInUseError'
}

export class RpcServer {
  // Errors are mapped and logged below; the library's own console.warn of every refused call is noise.
  private readonly rpc = new JSONRPCServer<{ signal: AbortSignal }>({ errorListener: () => {} })
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private readonly connections = new Set<Connection>()
  private evictedConnections = 0
  private readonly closing = new AbortController()
  private readonly maxRequestBytes: number
  private readonly maxConnections: number
  private readonly maxBatchLength: number
  private readonly maxInflight: number
  private readonly maxUnsentReplyBytes: number
  private readonly idleTimeoutMs: number
  private readonly firstRequestTimeoutMs: number

  constructor (private readonly init: RpcServerInit) {
    this.maxRequestBytes = init.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES
    this.maxConnections = init.maxConnections ?? DEFAULT_MAX_RPC_CONNECTIONS
    this.maxBatchLength = init.maxBatchLength ?? DEFAULT_MAX_BATCH_LENGTH
    this.maxInflight = init.maxInflightPerConnection ?? DEFAULT_MAX_INFLIGHT_PER_CONNECTION
    this.maxUnsentReplyBytes = init.maxUnsentReplyBytes ?? DEFAULT_MAX_UNSENT_REPLY_BYTES
    this.idleTimeoutMs = init.idleTimeoutMs ?? DEFAULT_RPC_IDLE_TIMEOUT_MS
    this.firstRequestTimeoutMs = init.firstRequestTimeoutMs ?? DEFAULT_FIRST_REQUEST_TIMEOUT_MS
    for (const [name, method] of Object.entries(init.methods)) {
      this.rpc.addMethod(name, async (params, context) => await method(params, context))
    }
    this.rpc.mapErrorToJSONRPCErrorResponse = (id, error: unknown) => {
      if (error instanceof JSONRPCErrorException) return createJSONRPCErrorResponse(id, error.code, error.message, error.data)
      const err = error instanceof Error ? error : new Error(String(error))
      const code = ERROR_CODES_BY_NAME[err.name]
      if (code === undefined) {
        this.init.onError?.('internal error in RPC method', { error: err.stack ?? err.message })
        return createJSONRPCErrorResponse(id, RpcErrorCode.InternalError, `internal error: ${err.message}`, { name: err.name })
      }
      return createJSONRPCErrorResponse(id, code, err.message, { name: err.name })
    }
  }

  async listen (path: string): Promise<void> {
    await removeStaleSocket(path)
    const server = createServer(socket => { this.accept(socket) })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(path, () => { server.off('error', reject); resolve() })
    })
    await chmod(path, this.init.socketMode ?? 0o660)
  }

  private accept (socket: Socket): void {
    socket.on('error', () => {})
    this.sockets.add(socket)
    socket.on('close', () => this.sockets.delete(socket))
    if (this.connections.size >= this.maxConnections && !this.evictIdle()) {
      this.refuse(socket, `too many connections (limit ${this.maxConnections}), all busy`)
      return
    }
    const conn: Connection = { socket, lastActivityMs: Date.now(), sentRequest: false, inflight: 0, lines: [], paused: false }
    this.connections.add(conn)
    // A connection that has sent nothing yet gets a short timeout: silent connections must not hold slots.
    socket.setTimeout(this.firstRequestTimeoutMs, () => { if (conn.inflight === 0) socket.destroy() })
    socket.on('close', () => { this.connections.delete(conn) })
    let buffered: Buffer[] = []
    let bufferedBytes = 0
    let ended = false
    const finishIfDone = (): void => {
      if (ended && conn.inflight === 0 && conn.lines.length === 0 && !socket.destroyed) socket.end()
    }
    // Reading stops while lines wait, requests are at their bound, or replies sit unsent (a client that
    // does not read its replies): the daemon's memory per connection stays bounded.
    const updateFlow = (): void => {
      if (socket.destroyed) return
      const hold = conn.lines.length > 0 || conn.inflight >= this.maxInflight || socket.writableLength > this.maxUnsentReplyBytes
      if (hold && !conn.paused) { conn.paused = true; socket.pause() } else if (!hold && conn.paused) { conn.paused = false; socket.resume() }
    }
    const send = (response: unknown): void => {
      if (response !== null && !socket.destroyed && socket.writable) socket.write(JSON.stringify(response) + '\n')
    }
    const pump = (): void => {
      while (conn.lines.length > 0 && conn.inflight < this.maxInflight && socket.writableLength <= this.maxUnsentReplyBytes && !socket.destroyed) {
        const line = conn.lines.shift() as string
        conn.inflight++
        this.handle(line).then(send, err => {
          this.init.onError?.('RPC handler failed', { error: (err as Error).message })
          send(createJSONRPCErrorResponse(null, RpcErrorCode.InternalError, 'internal error'))
        }).finally(() => {
          conn.inflight--
          conn.lastActivityMs = Date.now()
          pump()
        })
      }
      updateFlow()
      finishIfDone()
    }
    socket.on('drain', pump)
    const enqueue = (line: string): void => {
      if (line.trim() === '') return
      if (!conn.sentRequest) {
        conn.sentRequest = true
        socket.setTimeout(this.idleTimeoutMs)
      }
      conn.lines.push(line)
    }
    socket.on('data', (chunk: Buffer) => {
      conn.lastActivityMs = Date.now()
      let start = 0
      let newline = chunk.indexOf(10)
      while (newline !== -1) {
        const piece = chunk.subarray(start, newline)
        if (bufferedBytes + piece.length > this.maxRequestBytes) return this.tooLarge(socket)
        buffered.push(piece)
        const line = Buffer.concat(buffered).toString('utf8')
        buffered = []
        bufferedBytes = 0
        enqueue(line)
        start = newline + 1
        newline = chunk.indexOf(10, start)
      }
      const rest = chunk.subarray(start)
      if (rest.length > 0) {
        bufferedBytes += rest.length
        if (bufferedBytes > this.maxRequestBytes) return this.tooLarge(socket)
        buffered.push(rest)
      }
      pump()
    })
    socket.on('end', () => {
      // A last request without its newline is still answered.
      if (bufferedBytes > 0) {
        enqueue(Buffer.concat(buffered).toString('utf8'))
        buffered = []
        bufferedBytes = 0
      }
      ended = true
      pump()
    })
  }

  /** Makes room for a new connection by closing the least recently active one with nothing in progress. */
  private evictIdle (): boolean {
    let oldest: Connection | undefined
    for (const conn of this.connections) {
      if (conn.inflight > 0 || conn.lines.length > 0) continue
      if (oldest === undefined || conn.lastActivityMs < oldest.lastActivityMs) oldest = conn
    }
    if (oldest === undefined) return false
    this.connections.delete(oldest)
    this.evictedConnections++
    oldest.socket.removeAllListeners('data')
    oldest.socket.removeAllListeners('end')
    this.refuse(oldest.socket, 'connection closed: idle while the daemon is at its connection limit')
    return true
  }

  /** Says why with 1091 and closes; a client that reads nothing cannot keep the socket open past a second. */
  private refuse (socket: Socket, message: string): void {
    // Reading to the client's EOF lets the socket close by itself (destroying it with unread input would reset
    // the connection and lose the message); a client that never closes is cut off after a second.
    socket.on('data', () => {})
    socket.resume()
    socket.end(JSON.stringify(createJSONRPCErrorResponse(null, RpcErrorCode.TooManyConnections, message)) + '\n')
    setTimeout(() => socket.destroy(), REFUSE_LINGER_MS).unref()
  }

  /** Per-connection flow state, for status and tests: unsent reply bytes never exceed the bound by much. */
  stats (): RpcServerStats {
    const connections = [...this.connections].map(c => ({
      inflight: c.inflight,
      queuedLines: c.lines.length,
      unsentReplyBytes: c.socket.writableLength,
      paused: c.paused,
      sentRequest: c.sentRequest
    }))
    return { connections, maxUnsentReplyBytes: this.maxUnsentReplyBytes, maxConnections: this.maxConnections, evictedConnections: this.evictedConnections }
  }

  private tooLarge (socket: Socket): void {
    // The stream cannot be resynchronised after an oversized line: answer and close this connection only.
    const response = createJSONRPCErrorResponse(null, RpcErrorCode.RequestTooLarge, `request larger than ${this.maxRequestBytes} bytes`)
    socket.removeAllListeners('data')
    socket.removeAllListeners('end')
    socket.end(JSON.stringify(response) + '\n')
  }

  /** Handles one line: a request, a notification or a batch. Returns the response (null: nothing to send). */
  async handle (line: string): Promise<JSONRPCResponse | JSONRPCResponse[] | null> {
    let request: unknown
    try {
      request = JSON.parse(line)
    } catch {
      return createJSONRPCErrorResponse(null, RpcErrorCode.ParseError, 'parse error: not valid JSON')
    }
    const context = { signal: this.closing.signal }
    if (Array.isArray(request)) {
      if (request.length === 0) return createJSONRPCErrorResponse(null, RpcErrorCode.InvalidRequest, 'invalid request: empty batch')
      if (request.length > this.maxBatchLength) return createJSONRPCErrorResponse(null, RpcErrorCode.InvalidRequest, `invalid request: batch of ${request.length} over the limit of ${this.maxBatchLength}`)
      const responses = await Promise.all(request.map(async item => await this.single(item, context)))
      const present = responses.filter((r): r is JSONRPCResponse => r !== null)
      return present.length === 0 ? null : present
    }
    return await this.single(request, context)
  }

  private async single (request: unknown, context: { signal: AbortSignal }): Promise<JSONRPCResponse | null> {
    const valid = typeof request === 'object' && request !== null && (request as { jsonrpc?: unknown }).jsonrpc === '2.0' &&
      typeof (request as { method?: unknown }).method === 'string'
    if (!valid) {
      const id = (request as { id?: unknown } | null)?.id
      return createJSONRPCErrorResponse(typeof id === 'string' || typeof id === 'number' ? id : null, RpcErrorCode.InvalidRequest, 'invalid request: expected {"jsonrpc":"2.0","method":...}')
    }
    const params = (request as { params?: unknown }).params
    if (params !== undefined && (typeof params !== 'object' || params === null)) {
      const id = (request as { id?: unknown }).id
      return createJSONRPCErrorResponse(typeof id === 'string' || typeof id === 'number' ? id : null, RpcErrorCode.InvalidRequest, 'invalid request: params must be an object or an array')
    }
    return await this.rpc.receive(request as never, context)
  }

  connectionCount (): number {
    return this.connections.size
  }

  async close (): Promise<void> {
    this.closing.abort()
    const server = this.server
    this.server = undefined
    for (const socket of this.sockets) socket.destroy()
    if (server !== undefined) await new Promise<void>(resolve => server.close(() => resolve()))
  }
}

/** Removes a socket file left by a dead daemon; refuses when a live one answers on it. */
export async function removeStaleSocket (path: string): Promise<void> {
  let info
  try {
    info = await stat(path)
  } catch {
    return
  }
  if (!info.isSocket()) throw new SocketInUseError(`${path} exists and is not a socket`)
  const alive = await new Promise<boolean>(resolve => {
    const probe = createConnection(path)
    probe.once('connect', () => { probe.destroy(); resolve(true) })
    probe.once('error', () => resolve(false))
  })
  if (alive) throw new SocketInUseError(`${path} is in use by a running process`)
  await rm(path, { force: true })
}
