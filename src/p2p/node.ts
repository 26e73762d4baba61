// The libp2p node of an agent: TCP, noise (or plaintext, an operator's explicit choice for trusted networks),
// yamux, identify, ping, gossipsub (StrictSign), optional private network (pnet PSK), the agent's Ed25519
// identity as its peer id, and a bootstrap dialer that keeps re-dialing bootstrap peers with backoff.
//
// Gossipsub's mesh and libp2p's connection monitor: gossip-params.ts (fewer copies of each advert).
// Gossipsub scoring: image topics get topic score params (see imageTopicScoreParams) so that a Reject from
// the advert validator costs the sender score (P4, invalid message deliveries), and banned peers (corrupt
// blocks) get a large negative application score (P5) so they are pruned from meshes too.

import '../polyfill.js'
import { createHash } from 'node:crypto'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub, StrictSign, type GossipSub } from '@libp2p/gossipsub'
import type { TopicScoreParams } from '@libp2p/gossipsub/score'
import { preSharedKey } from '@libp2p/pnet'
import { plaintext } from '@libp2p/plaintext'
import { privateKeyFromRaw } from '@libp2p/crypto/keys'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { PeerId, ConnectionEncrypter } from '@libp2p/interface'
import type { Identify } from '@libp2p/identify'
import type { Ping } from '@libp2p/ping'
import type { Identity } from '../identity/key.js'
import { parsePsk } from './psk.js'
import { CONNECTION_PING_INTERVAL_MS, GOSSIP_MESH } from './gossip-params.js'
import type { Beat } from '../beat.js'

export type Encryption = 'noise' | 'plaintext'

export type NodeServices = {
  identify: Identify
  ping: Ping
  pubsub: GossipSub
}

export type P2PNode = Libp2p<NodeServices>

export const DEFAULT_MAX_CONNECTIONS = 300
/** Yamux frame size: larger frames mean fewer per-frame costs for block transfers. */
export const DEFAULT_YAMUX_MAX_MESSAGE_BYTES = 256 * 1024
/** Per-stream receive window: lets a 1 MiB batch be in flight without a window stall. */
export const DEFAULT_YAMUX_WINDOW_BYTES = 4 * 1024 * 1024
export const DEFAULT_STREAM_INACTIVITY_MS = 120_000

export interface NodeInit {
  identity: Identity
  listen: readonly string[]
  /** PSK file contents (the swarm.key format); nodes with another key cannot connect. */
  psk?: Uint8Array
  encryption?: Encryption
  maxConnections?: number
  /** Off by default: agents on one host (loopback tests, the demo) share an IP. */
  ipColocationPenalty?: boolean
  /** P5 of gossipsub's score: e.g. a large negative value for banned peers. */
  appSpecificScore?: (peerId: string) => number
  /** Peers refused at the connection level (banned). */
  isDenied?: (peerId: string) => boolean
  yamuxMaxMessageBytes?: number
  yamuxWindowBytes?: number
}

/**
 * Socket write buffer before write() reports backpressure. Node's default (16 KiB) is below one block frame,
 * so every frame made each layer above (noise, yamux, the stream) stop and wait for a 'drain' event.
 */
export const SOCKET_HIGH_WATER_MARK_BYTES = 1024 * 1024
// Passed through to net.connect and net.createServer (TCPSocketOptions does not list highWaterMark).
const socketOptions = {
  dialOpts: { highWaterMark: SOCKET_HIGH_WATER_MARK_BYTES },
  listenOpts: { highWaterMark: SOCKET_HIGH_WATER_MARK_BYTES }
}

export async function createNode (init: NodeInit): Promise<P2PNode> {
  const { identity } = init
  const raw = new Uint8Array(64)
  raw.set(identity.seed, 0)
  raw.set(identity.publicKey, 32)
  const privateKey = privateKeyFromRaw(raw)
  const encryption = init.encryption ?? 'noise'
  const encrypters: Array<(components: any) => ConnectionEncrypter> = encryption === 'plaintext' ? [plaintext()] : [noise()]
  const maxConnections = init.maxConnections ?? DEFAULT_MAX_CONNECTIONS
  const windowBytes = init.yamuxWindowBytes ?? DEFAULT_YAMUX_WINDOW_BYTES
  return await createLibp2p({
    privateKey,
    addresses: { listen: [...init.listen] },
    transports: [tcp(socketOptions as any)],
    connectionEncrypters: encrypters,
    streamMuxers: [yamux({
      maxMessageSize: init.yamuxMaxMessageBytes ?? DEFAULT_YAMUX_MAX_MESSAGE_BYTES,
      streamOptions: {
        initialStreamWindowSize: windowBytes,
        maxStreamWindowSize: Math.max(windowBytes, 16 * 1024 * 1024),
        inactivityTimeout: DEFAULT_STREAM_INACTIVITY_MS,
        maxReadBufferLength: 32 * 1024 * 1024
      }
    })],
    connectionGater: {
      denyDialPeer: (peerId: PeerId) => init.isDenied?.(peerId.toString()) === true,
      denyInboundEncryptedConnection: (peerId: PeerId) => init.isDenied?.(peerId.toString()) === true,
      denyOutboundEncryptedConnection: (peerId: PeerId) => init.isDenied?.(peerId.toString()) === true
    },
    ...(init.psk !== undefined ? { connectionProtector: preSharedKey({ psk: parsePsk(init.psk) }) } : {}),
    connectionMonitor: { pingInterval: CONNECTION_PING_INTERVAL_MS },
    connectionManager: {
      maxConnections,
      inboundConnectionThreshold: Math.max(100, maxConnections),
      maxIncomingPendingConnections: 64,
      maxParallelDials: 64
    },
    services: {
      identify: identify(),
      ping: ping(),
      pubsub: gossipsub({
        globalSignaturePolicy: StrictSign,
        ...GOSSIP_MESH,
        allowPublishToZeroTopicPeers: true,
        emitSelf: false,
        // Adverts are validated by our topic validator before they are forwarded.
        asyncValidation: false,
        // Without it gossipsub verifies the signature of every copy of a message (one from each mesh peer)
        // before its duplicate check: most of an agent's gossip CPU. A copy whose signature fails is not
        // remembered, so a forged copy cannot shadow the real one.
        fastMsgIdFn: fastMessageId,
        scoreParams: {
          IPColocationFactorWeight: init.ipColocationPenalty === true ? -5 : 0,
          appSpecificScore: init.appSpecificScore ?? (() => 0),
          appSpecificWeight: 1,
          topics: {}
        }
      }) as (components: any) => GossipSub
    }
  }) as unknown as P2PNode
}

/** With no peer connected, gossipsub's heartbeat and score decay run once in this many beats. */
export const GOSSIP_ALONE_EVERY_BEATS = 10

/**
 * Gossipsub's heartbeat and its score decay on the agent's beat (src/beat.ts) instead of two timers of its own
 * (1 s each, at two phases): the same work, one wake-up instead of two (at rest an agent's wake-ups, not its
 * work, are most of its CPU). Its heartbeat() and score.background() are public; the timer that would call the
 * heartbeat is not: this takes it over through @libp2p/gossipsub's internals (runHeartbeat, which re-arms it,
 * and status.heartbeatTimeout), checked here. Where they are not as expected (another gossipsub version), or
 * the beat's period is not gossipsub's heartbeat interval, gossipsub keeps its timers and this returns undefined.
 * Call after the node started. The returned function takes the heartbeat off the beat (gossipsub's own timers
 * stay off): call it before the node stops.
 */
export function runGossipsubOnBeat (pubsub: GossipSub, beat: Beat, onError: (err: unknown) => void): (() => void) | undefined {
  // The class behind the GossipSub interface: public methods the interface leaves out, and the internals.
  const gs = pubsub as unknown as {
    isStarted?: () => boolean
    heartbeat?: () => Promise<void>
    score?: { background?: () => void, stop?: () => void }
    runHeartbeat?: unknown
    status?: { heartbeatTimeout?: ReturnType<typeof setTimeout> }
    opts?: { heartbeatInterval?: number }
  }
  const { isStarted, heartbeat, score, status } = gs
  const background = score?.background; const stopScore = score?.stop
  if (typeof isStarted !== 'function' || typeof heartbeat !== 'function' || typeof background !== 'function' ||
    typeof stopScore !== 'function' || typeof gs.runHeartbeat !== 'function' || status?.heartbeatTimeout === undefined ||
    gs.opts?.heartbeatInterval !== beat.periodMs || !isStarted.call(gs)) return undefined
  // A heartbeat already running re-arms the timer through this property when it ends: it then arms a no-op.
  gs.runHeartbeat = () => {}
  clearTimeout(status.heartbeatTimeout)
  stopScore.call(score)
  let heartbeatRunning = false
  let beats = 0
  return beat.add(() => {
    if (!isStarted.call(gs)) return
    // With no peer there is no mesh to keep nor score to decay; the message cache still ages, once in 10 beats.
    if (++beats % GOSSIP_ALONE_EVERY_BEATS !== 0 && pubsub.getPeers().length === 0) return
    background.call(score)
    // heartbeat() ends a few microtasks later (it awaits its GRAFT/PRUNE sends); one still running is not doubled.
    if (heartbeatRunning) return
    heartbeatRunning = true
    heartbeat.call(gs).catch(onError).finally(() => { heartbeatRunning = false })
  })
}

/** Sender and sequence number: the message id of StrictSign (each sender's seqno is unique). */
export function fastMessageId (msg: { from?: Uint8Array, seqno?: Uint8Array, data?: Uint8Array }): string {
  if (msg.from !== undefined && msg.seqno !== undefined) return Buffer.from(msg.from).toString('base64') + Buffer.from(msg.seqno).toString('base64')
  return createHash('sha256').update(msg.data ?? new Uint8Array(0)).digest('base64')
}

/**
 * Score params of an image topic: only P4 (invalid messages, from the validator's Reject) counts, heavily,
 * so one bad advert drops the sender below gossipsub's gossip threshold (-10) and a few graylist it (-80).
 * The counter decays by 0.9 per second, so an honest peer that once sent a bad advert recovers in a minute.
 */
export function imageTopicScoreParams (): TopicScoreParams {
  return {
    topicWeight: 1,
    timeInMeshWeight: 0,
    timeInMeshQuantum: 1000,
    timeInMeshCap: 1,
    firstMessageDeliveriesWeight: 0,
    firstMessageDeliveriesDecay: 0.5,
    firstMessageDeliveriesCap: 1,
    meshMessageDeliveriesWeight: 0,
    meshMessageDeliveriesDecay: 0.5,
    meshMessageDeliveriesCap: 1,
    meshMessageDeliveriesThreshold: 1,
    meshMessageDeliveriesWindow: 10,
    meshMessageDeliveriesActivation: 5000,
    meshFailurePenaltyWeight: 0,
    meshFailurePenaltyDecay: 0.5,
    invalidMessageDeliveriesWeight: -20,
    invalidMessageDeliveriesDecay: 0.9
  }
}

// ---- bootstrap ----

export const BOOTSTRAP_CHECK_MS = 250
/** With every bootstrap address connected, the check runs this often (a disconnect of one runs it at once). */
export const BOOTSTRAP_IDLE_CHECK_MS = 5000
export const BOOTSTRAP_MIN_BACKOFF_MS = 250
/**
 * A bootstrap peer is often the origin: while it restarts, every read of a block nobody else holds waits for
 * the re-dial, so the backoff stays short, and a refused dial does not grow it (it costs next to nothing).
 * Churn run of the testbed: with 30 s, reads stalled about 6 s beyond the origin's 3.7 s restart.
 */
export const BOOTSTRAP_MAX_BACKOFF_MS = 1000
/** Up to this fraction is added to each wait at random, so many agents do not re-dial in step. */
export const BOOTSTRAP_BACKOFF_JITTER = 0.25
export const BOOTSTRAP_DIAL_TIMEOUT_MS = 5_000

/** The dial was refused (ECONNREFUSED) by the host: libp2p wraps the socket's error, in its cause or message. */
export function isConnectionRefused (err: unknown, depth = 0): boolean {
  if (err === null || typeof err !== 'object' || depth > 4) return false
  const e = err as { code?: unknown, cause?: unknown, errors?: unknown, message?: unknown }
  if (e.code === 'ECONNREFUSED') return true
  if (isConnectionRefused(e.cause, depth + 1)) return true
  if (Array.isArray(e.errors) && e.errors.some(inner => isConnectionRefused(inner, depth + 1))) return true
  return typeof e.message === 'string' && /\bECONNREFUSED\b/.test(e.message)
}

export interface BootstrapLogger {
  info: (message: string, fields?: Record<string, unknown>) => void
  warn: (message: string, fields?: Record<string, unknown>) => void
}

interface BootstrapEntry {
  addr: Multiaddr
  peerId?: PeerId
  backoffMs: number
  nextAttemptMs: number
  dialing: boolean
}

/**
 * Keeps a connection to each bootstrap address: dials at start, and whenever the connection is gone, re-dials
 * with exponential backoff (250 ms doubling to 1 s, plus jitter; reset once connected). Bounded: one dial per address at a
 * time, each with a timeout.
 */
export class Bootstrapper {
  private readonly entries: BootstrapEntry[]
  private timer: NodeJS.Timeout | undefined
  private readonly controller = new AbortController()

  constructor (private readonly node: P2PNode, addrs: readonly string[], private readonly logger: BootstrapLogger,
    private readonly now: () => number = Date.now) {
    this.entries = addrs.map(text => {
      const addr = multiaddr(text)
      return { addr, backoffMs: BOOTSTRAP_MIN_BACKOFF_MS, nextAttemptMs: 0, dialing: false }
    })
  }

  start (): void {
    if (this.entries.length === 0) return
    this.node.addEventListener('peer:disconnect', this.onDisconnect)
    this.run()
  }

  stop (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.controller.abort()
    this.node.removeEventListener('peer:disconnect', this.onDisconnect)
  }

  /** A bootstrap peer went away: look now, not at the next idle check. */
  private readonly onDisconnect = (event: CustomEvent<PeerId>): void => {
    if (this.controller.signal.aborted) return
    if (this.entries.some(entry => entry.peerId?.equals(event.detail) === true)) this.run()
  }

  /**
   * Ticks now, then every BOOTSTRAP_CHECK_MS while an address is not connected; once all are, every
   * BOOTSTRAP_IDLE_CHECK_MS (a disconnect wakes it at once). Four wakeups a second at rest were most of what a
   * connected idle agent did besides its heartbeats.
   */
  private run (): void {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    if (this.controller.signal.aborted) return
    this.tick()
    const allConnected = this.entries.every(entry => !entry.dialing && this.isConnected(entry))
    this.timer = setTimeout(() => { this.run() }, allConnected ? BOOTSTRAP_IDLE_CHECK_MS : BOOTSTRAP_CHECK_MS)
    this.timer.unref()
  }

  /** Connected bootstrap peers. */
  connectedCount (): number {
    return this.entries.filter(entry => this.isConnected(entry)).length
  }

  private isConnected (entry: BootstrapEntry): boolean {
    return entry.peerId !== undefined && this.node.getConnections(entry.peerId).length > 0
  }

  private tick (): void {
    const nowMs = this.now()
    for (const entry of this.entries) {
      if (entry.dialing) continue
      if (this.isConnected(entry)) {
        entry.backoffMs = BOOTSTRAP_MIN_BACKOFF_MS
        continue
      }
      if (nowMs < entry.nextAttemptMs) continue
      entry.dialing = true
      const signal = AbortSignal.any([this.controller.signal, AbortSignal.timeout(BOOTSTRAP_DIAL_TIMEOUT_MS)])
      this.node.dial(entry.addr, { signal }).then(connection => {
        entry.peerId = connection.remotePeer
        entry.backoffMs = BOOTSTRAP_MIN_BACKOFF_MS
      }, (err: Error) => {
        if (this.controller.signal.aborted) return
        // Refused: the host is up and its agent is not listening, typically restarting. The next dial costs a
        // SYN and a RST, and the sooner it connects the sooner reads waiting for that agent go on.
        if (isConnectionRefused(err)) entry.backoffMs = BOOTSTRAP_MIN_BACKOFF_MS
        entry.nextAttemptMs = this.now() + entry.backoffMs * (1 + BOOTSTRAP_BACKOFF_JITTER * Math.random())
        this.logger.warn('bootstrap dial failed', { addr: entry.addr.toString(), retryInMs: entry.backoffMs, error: err.message })
        if (!isConnectionRefused(err)) entry.backoffMs = Math.min(BOOTSTRAP_MAX_BACKOFF_MS, entry.backoffMs * 2)
      }).finally(() => { entry.dialing = false })
    }
  }
}
