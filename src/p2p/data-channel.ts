// The data channel: block frames between two agents on a direct TCP connection, sealed (sealed-channel.ts),
// instead of on the libp2p stream. The libp2p stream of /vmthunder/blocks/1 stays the control path and the
// fallback: a client asks for a channel there (CHANNEL), the server answers with a port, a one-time ticket and
// two fresh keys (CHANNEL_OFFER). Both travel inside the noise session (and the PSK's private network), so
// only the peer that asked learns them, and the channel serves exactly that peer id: bans, admission and
// upload limits apply as on the stream. If the port cannot be reached the client stays on the stream.
//
// Server: one listener beside libp2p's TCP listener (same host, port from config, 0 = any). A connection must
// present a live ticket (16 bytes, first thing) within HELLO_TIMEOUT_MS; tickets are single-use, expire after
// TICKET_TTL_MS, and are bounded per peer and in all, as are connections that have not presented one.

import net, { type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import type { Logger } from '../blockstack/cache.js'
import { CHANNEL_KEY_BYTES, CHANNEL_TOKEN_BYTES } from './wire.js'

export const TOKEN_BYTES = CHANNEL_TOKEN_BYTES
export const TICKET_TTL_MS = 10_000
export const HELLO_TIMEOUT_MS = 5_000
export const CONNECT_TIMEOUT_MS = 5_000
export const MAX_TICKETS = 1024
export const MAX_TICKETS_PER_PEER = 8
export const MAX_UNAUTHENTICATED_CONNECTIONS = 64

export interface ChannelKeys {
  sendKey: Uint8Array
  receiveKey: Uint8Array
}

export interface DataChannelOffer {
  port: number
  token: Uint8Array
  /** Seals what the client sends. */
  clientKey: Uint8Array
  /** Seals what the server sends. */
  serverKey: Uint8Array
}

interface Ticket {
  peerId: string
  expiresAtMs: number
  keys: ChannelKeys
}

export interface DataChannelServerInit {
  host: string
  port: number
  logger: Logger
  nowMs: () => number
  /** A connection presented a live ticket: serve block frames on it for that peer. */
  serve: (peerId: string, socket: Socket, keys: ChannelKeys) => void
}

export class DataChannelServer {
  private readonly server: net.Server
  private readonly tickets = new Map<string, Ticket>()
  private readonly sockets = new Set<Socket>()
  private unauthenticated = 0
  private listening = false

  constructor (private readonly init: DataChannelServerInit) {
    this.server = net.createServer({ noDelay: true }, socket => { this.accept(socket) })
    this.server.on('error', err => { init.logger.warn('data channel listener error', { error: err.message }) })
  }

  async start (): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(this.init.port, this.init.host, () => { this.server.off('error', reject); resolve() })
    })
    this.listening = true
  }

  get port (): number | undefined {
    const address = this.server.address()
    return this.listening && address !== null && typeof address === 'object' ? address.port : undefined
  }

  /** Connections open now (authenticated or not). */
  get connections (): number {
    return this.sockets.size
  }

  async stop (): Promise<void> {
    this.listening = false
    this.tickets.clear()
    for (const socket of this.sockets) socket.destroy()
    await new Promise<void>(resolve => { this.server.close(() => { resolve() }) })
  }

  /** A ticket for `peerId`, or undefined (not listening, or over the bounds). */
  offer (peerId: string): DataChannelOffer | undefined {
    const port = this.port
    if (port === undefined) return undefined
    this.expire()
    let ofPeer = 0
    for (const ticket of this.tickets.values()) if (ticket.peerId === peerId) ofPeer++
    if (ofPeer >= MAX_TICKETS_PER_PEER || this.tickets.size >= MAX_TICKETS) return undefined
    const token = randomBytes(TOKEN_BYTES)
    const clientKey = randomBytes(CHANNEL_KEY_BYTES)
    const serverKey = randomBytes(CHANNEL_KEY_BYTES)
    this.tickets.set(token.toString('hex'), { peerId, expiresAtMs: this.init.nowMs() + TICKET_TTL_MS, keys: { sendKey: serverKey, receiveKey: clientKey } })
    return { port, token, clientKey, serverKey }
  }

  private expire (): void {
    const now = this.init.nowMs()
    for (const [key, ticket] of this.tickets) if (ticket.expiresAtMs <= now) this.tickets.delete(key)
  }

  private accept (socket: Socket): void {
    if (!this.listening || this.unauthenticated >= MAX_UNAUTHENTICATED_CONNECTIONS) {
      socket.destroy()
      return
    }
    this.sockets.add(socket)
    this.unauthenticated++
    let authenticated = false
    const chunks: Buffer[] = []
    let have = 0
    const timer = setTimeout(() => { socket.destroy() }, HELLO_TIMEOUT_MS)
    const done = (): void => {
      if (authenticated) return
      authenticated = true
      this.unauthenticated--
      clearTimeout(timer)
      socket.off('data', onData)
    }
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk)
      have += chunk.length
      if (have < TOKEN_BYTES) return
      const all = Buffer.concat(chunks)
      done()
      socket.pause()
      const key = all.subarray(0, TOKEN_BYTES).toString('hex')
      const ticket = this.tickets.get(key)
      this.tickets.delete(key)
      if (ticket === undefined || ticket.expiresAtMs <= this.init.nowMs()) {
        this.init.logger.warn('data channel refused: no live ticket', { from: socket.remoteAddress })
        socket.destroy()
        return
      }
      // What came after the ticket is the first record: give it back to the socket for the channel.
      if (all.length > TOKEN_BYTES) socket.unshift(all.subarray(TOKEN_BYTES))
      this.init.serve(ticket.peerId, socket, ticket.keys)
      socket.resume()
    }
    socket.on('data', onData)
    socket.on('error', () => {})
    socket.on('close', () => { done(); this.sockets.delete(socket) })
  }
}

/**
 * What a client reads on its data channel (the blocks it asked for) is read into one buffer reused for every
 * read (net's `onread`), not into a fresh 64 KiB buffer per read pushed through a Readable: each fresh
 * buffer was new memory to fault in, and the stream's push and 'data' event ran per read.
 */
export const CLIENT_READ_BUFFER_BYTES = 256 * 1024
/** Bytes a client's socket may bring before its channel takes them (the server sends nothing before asked). */
const MAX_EARLY_BYTES = 1024 * 1024

/** A connected data channel socket; its bytes go to the sink given to `receive` (a SealedChannel's). */
export interface DataChannelSocket {
  socket: Socket
  /**
   * From now on each read is handed to `sink`, which must use it at once: the buffer is read into again
   * afterwards. Bytes read before are handed over first.
   */
  receive: (sink: (chunk: Buffer) => void) => void
}

/** Connects to a server's data channel and presents the ticket; the socket is then ready for a SealedChannel. */
export async function connectDataChannel (host: string, offer: DataChannelOffer, signal: AbortSignal): Promise<DataChannelSocket> {
  signal.throwIfAborted()
  let sink: ((chunk: Buffer) => void) | undefined
  const early: Buffer[] = []
  let earlyBytes = 0
  const socket = net.connect({
    host,
    port: offer.port,
    noDelay: true,
    onread: {
      buffer: Buffer.allocUnsafe(CLIENT_READ_BUFFER_BYTES),
      callback: (bytes: number, buffer: Uint8Array): boolean => {
        const chunk = Buffer.from(buffer.buffer, buffer.byteOffset, bytes)
        if (sink !== undefined) sink(chunk)
        else if ((earlyBytes += bytes) > MAX_EARLY_BYTES) socket.destroy()
        else early.push(Buffer.from(chunk)) // a copy: the buffer is read into again
        return true
      }
    }
  })
  const { promise, resolve, reject } = Promise.withResolvers<void>()
  const timeout = AbortSignal.any([signal, AbortSignal.timeout(CONNECT_TIMEOUT_MS)])
  const onAbort = (): void => { reject(timeout.reason) }
  timeout.addEventListener('abort', onAbort, { once: true })
  socket.once('connect', () => { resolve() })
  socket.once('error', reject)
  try {
    await promise
  } catch (err) {
    socket.destroy()
    throw err
  } finally {
    timeout.removeEventListener('abort', onAbort)
    socket.off('error', reject)
  }
  socket.write(offer.token)
  return {
    socket,
    receive: (to) => {
      sink = to
      for (const chunk of early.splice(0)) to(chunk)
    }
  }
}
