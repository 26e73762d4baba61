// The NBD server: accepts connections on unix and TCP listeners, runs negotiation (handshake.ts) under a
// timeout, then the transmission phase (transmission.ts). Each connection owns an AbortController: closing
// the server or losing the client aborts that connection's in-flight export reads. A failure of one
// connection (bad bytes, client gone, export error) is logged and loses only that connection.

import { chmod, lstat, unlink } from 'node:fs/promises'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { setMaxListeners } from 'node:events'
import type { ExportProvider } from '../types.js'
import { ByteQueue } from './byte-queue.js'
import {
  DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_MAX_IN_FLIGHT_REQUESTS, DEFAULT_MAX_OPTION_BYTES,
  DEFAULT_HALF_CLOSE_GRACE_MS, DEFAULT_MAX_OPTIONS, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_NEGOTIATION_TIMEOUT_MS, DEFAULT_PREFERRED_BLOCK_BYTES,
  READ_ONLY_TRANSMISSION_FLAGS
} from './constants.js'
import {
  NbdConnectionClosedError, NbdNegotiationTimeoutError, NbdNegotiationTruncatedError, NbdServerClosedError, NbdSocketPathInUseError
} from './errors.js'
import { negotiate } from './handshake.js'
import { type NbdLogger, stderrLogger } from './logger.js'
import { serveTransmission } from './transmission.js'

/** Listeners on a connection's signal besides one per read in flight (negotiation, transmission). */
const CONNECTION_SIGNAL_SPARE_LISTENERS = 8

/** Unix socket files are created with this mode: owner and group (the hypervisor's) may connect. */
export const DEFAULT_UNIX_SOCKET_MODE = 0o660

export interface NbdServerInit {
  provider: ExportProvider
  logger?: NbdLogger
  /** Connections beyond this are closed on accept. Default 256. */
  maxConnections?: number
  /** Negotiation must finish within this, else the connection is dropped. Default 10 s. */
  negotiationTimeoutMs?: number
  /** Option data bound; a longer option closes the connection. Default 64 KiB. */
  maxOptionBytes?: number
  /** Options per negotiation. Default 4096. */
  maxOptions?: number
  /** Largest request served (advertised as the block size maximum). Default 32 MiB. */
  maxPayloadBytes?: number
  /** Advertised preferred block size. Default 4096. */
  preferredBlockBytes?: number
  /** Per-connection bound on requests in flight; over it the socket is paused. Default 64. */
  maxInFlightRequests?: number
  /** Per-connection bound on bytes of reads in flight (issued, reply not flushed). Default 64 MiB. */
  maxInFlightBytes?: number
  /** After a client's EOF, how long requests in flight may still be answered before they are aborted. Default 5 s. */
  halfCloseGraceMs?: number
}

export interface ListenOptions {
  /** Aborting cancels a pending listen, and afterwards closes this listener (not open connections). */
  signal?: AbortSignal
}

export interface NbdServer {
  /** Listens on a unix socket; a stale socket file is removed first, the new one gets mode 0660. */
  listenUnix: (path: string, options?: ListenOptions) => Promise<void>
  /** Listens on TCP; returns the bound address (port 0 picks a free port). */
  listenTcp: (host: string, port: number, options?: ListenOptions) => Promise<{ host: string, port: number }>
  /** Stops listening, aborts in-flight reads, closes every connection. */
  close: () => Promise<void>
  /** Open connections, in negotiation or transmission. */
  connections: () => number
}

interface Connection {
  id: number
  socket: Socket
  controller: AbortController
}

export function createNbdServer (init: NbdServerInit): NbdServer {
  const logger = init.logger ?? stderrLogger
  const maxConnections = init.maxConnections ?? DEFAULT_MAX_CONNECTIONS
  const negotiationTimeoutMs = init.negotiationTimeoutMs ?? DEFAULT_NEGOTIATION_TIMEOUT_MS
  const maxPayloadBytes = init.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES
  const negotiationConfig = {
    provider: init.provider,
    transmissionFlags: READ_ONLY_TRANSMISSION_FLAGS,
    maxOptionBytes: init.maxOptionBytes ?? DEFAULT_MAX_OPTION_BYTES,
    maxOptions: init.maxOptions ?? DEFAULT_MAX_OPTIONS,
    preferredBlockBytes: init.preferredBlockBytes ?? DEFAULT_PREFERRED_BLOCK_BYTES,
    maxPayloadBytes,
    logger
  }
  const transmissionConfig = {
    maxPayloadBytes,
    maxInFlightRequests: init.maxInFlightRequests ?? DEFAULT_MAX_IN_FLIGHT_REQUESTS,
    maxInFlightBytes: init.maxInFlightBytes ?? DEFAULT_MAX_IN_FLIGHT_BYTES,
    halfCloseGraceMs: init.halfCloseGraceMs ?? DEFAULT_HALF_CLOSE_GRACE_MS,
    logger
  }

  const listeners = new Set<Server>()
  const open = new Map<number, Connection>()
  let nextId = 1
  let closing = false
  const closedWaiters = new Set<() => void>()

  function onConnection (socket: Socket): void {
    const id = nextId++
    socket.on('error', (err: NodeJS.ErrnoException) => {
      // Resets and broken pipes are how clients vanish; anything else is worth a warning.
      const level = err.code === 'ECONNRESET' || err.code === 'EPIPE' ? 'debug' : 'warn'
      logger[level]('nbd socket error', { connection: id, error: err })
    })
    if (closing || open.size >= maxConnections) {
      logger.warn('nbd connection refused', { connection: id, reason: closing ? 'closing' : 'too many connections', maxConnections })
      socket.destroy()
      return
    }
    socket.setNoDelay?.(true)
    const conn: Connection = { id, socket, controller: new AbortController() }
    // Each read in flight waits on this signal (the cache's raceAbort); reads are bounded per connection, so
    // the listener count is too: a stall (a banned source) must not look like a leak.
    setMaxListeners(transmissionConfig.maxInFlightRequests + CONNECTION_SIGNAL_SPARE_LISTENERS, conn.controller.signal)
    open.set(id, conn)
    socket.once('close', () => {
      conn.controller.abort(new NbdConnectionClosedError('connection closed'))
      open.delete(id)
      logger.debug('nbd connection gone', { connection: id, open: open.size })
      if (open.size === 0) for (const w of closedWaiters) w()
    })
    void runConnection(conn)
  }

  async function runConnection (conn: Connection): Promise<void> {
    const { socket, controller, id } = conn
    const queue = new ByteQueue()
    const negotiation = new AbortController()
    const onConnAbort = (): void => { negotiation.abort(controller.signal.reason) }
    controller.signal.addEventListener('abort', onConnAbort, { once: true })
    const timer = setTimeout(() => {
      negotiation.abort(new NbdNegotiationTimeoutError(`negotiation took over ${negotiationTimeoutMs} ms`))
    }, negotiationTimeoutMs)
    let result
    try {
      result = await negotiate(socket, queue, negotiationConfig, negotiation.signal)
    } catch (err) {
      const quiet = err instanceof NbdNegotiationTruncatedError || err instanceof NbdServerClosedError ||
        err instanceof NbdConnectionClosedError
      logger[quiet ? 'debug' : 'warn']('nbd negotiation failed, closing connection', { connection: id, error: err })
      socket.destroy()
      return
    } finally {
      clearTimeout(timer)
      controller.signal.removeEventListener('abort', onConnAbort)
    }
    if (result.kind === 'aborted') {
      logger.debug('nbd client aborted negotiation', { connection: id })
      socket.end(() => { socket.destroy() })
      return
    }
    logger.debug('nbd transmission started', { connection: id, export: result.export.name, via: result.option })
    const stats = await serveTransmission(socket, queue, result.export, transmissionConfig, controller.signal, id)
    logger.debug('nbd connection closed', { connection: id, ...stats })
  }

  function newListener (): Server {
    // allowHalfOpen: a client that shuts down its side still gets the replies to requests it sent.
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onConnection)
    server.on('error', (err) => { logger.error('nbd listener error', { error: err }) })
    return server
  }

  async function listen (server: Server, bind: (done: (err?: Error) => void) => void, signal?: AbortSignal): Promise<void> {
    if (closing) throw new NbdServerClosedError('server is closed')
    signal?.throwIfAborted()
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => {
        signal?.removeEventListener('abort', onAbort)
        reject(err)
      }
      const onAbort = (): void => {
        server.off('error', onError)
        server.close()
        reject(signal?.reason)
      }
      server.once('error', onError)
      signal?.addEventListener('abort', onAbort, { once: true })
      bind(() => {
        server.off('error', onError)
        signal?.removeEventListener('abort', onAbort)
        resolve()
      })
    })
    listeners.add(server)
    server.once('close', () => listeners.delete(server))
    signal?.addEventListener('abort', () => { server.close() }, { once: true })
  }

  return {
    async listenUnix (path, options = {}) {
      await removeStaleSocket(path)
      const server = newListener()
      await listen(server, done => server.listen(path, () => { done() }), options.signal)
      await chmod(path, DEFAULT_UNIX_SOCKET_MODE)
    },

    async listenTcp (host, port, options = {}) {
      const server = newListener()
      await listen(server, done => server.listen(port, host, () => { done() }), options.signal)
      const address = server.address()
      if (address === null || typeof address === 'string') throw new Error('unexpected TCP address')
      return { host: address.address, port: address.port }
    },

    async close () {
      closing = true
      const listenersClosed = [...listeners].map(s => new Promise<void>(resolve => { s.close(() => { resolve() }) }))
      const allClosed = open.size === 0
        ? Promise.resolve()
        : new Promise<void>(resolve => { closedWaiters.add(resolve) })
      for (const conn of open.values()) {
        conn.controller.abort(new NbdServerClosedError('server closing'))
        conn.socket.destroy()
      }
      await Promise.all([...listenersClosed, allClosed])
    },

    connections: () => open.size
  }
}

/**
 * Removes a leftover socket file at `path` (from a crashed run). Refuses when a server still answers on it or
 * when the path is something other than a socket.
 */
async function removeStaleSocket (path: string): Promise<void> {
  let isSocket: boolean
  try {
    isSocket = (await lstat(path)).isSocket()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return
    throw err
  }
  if (!isSocket) throw new NbdSocketPathInUseError(`${path} exists and is not a socket`, path)
  const live = await new Promise<boolean>((resolve) => {
    const probe = connect(path)
    probe.once('connect', () => { probe.destroy(); resolve(true) })
    probe.once('error', () => { resolve(false) })
  })
  if (live) throw new NbdSocketPathInUseError(`a server is listening on ${path}`, path)
  await unlink(path).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
}
