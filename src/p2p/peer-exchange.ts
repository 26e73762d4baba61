// /vmthunder/peers/1: peer exchange. An agent knows only its bootstrap peers when it starts; without this, a
// fresh cluster's agents are connected to those alone when a boot wave begins, and everything the wave needs
// at once goes through them. In the 8-host testbed (every host bootstrapped to the origin) the advert of the
// origin's first child reached the other hosts through the origin's gossip 0.4-0.9 s after it attached, each
// admission to a relay first dialled it (0.4-0.9 s more on the loaded hosts), and 6 of 8 hosts' first VM read
// waited 1.1-2.0 s for a parent. So an agent asks each peer it connects to which agents that peer is connected
// to, and dials them, up to a target number of connections; while under the target it asks again, each peer
// after 0.25 s, 0.5 s, 1 s... while its swarm is changing (a new connection, or an answer that named a peer it
// did not know, in the last second), else once a minute.
//
//   request:  nothing (opening the stream asks)
//   response: one length-prefixed message: count u8 | count x entry
//             entry: idLength u8 | peer id (its string form, utf-8) | addrCount u8 | addrCount x (length u8 | multiaddr bytes)
//
// Bounded both ways: at most MAX_PEX_PEERS entries of MAX_PEX_ADDRS addresses of MAX_PEX_ADDR_BYTES; the server
// answers a peer at most once per PEX_SERVE_INTERVAL_MS (an empty list otherwise); the client dials at most
// MAX_PARALLEL_PEX_DIALS at a time, each within PEX_DIAL_TIMEOUT_MS, never past its target. What it gets is a
// hint only: a listed peer is dialled like any other (noise checks it is who the list says).

import '../polyfill.js'
import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr, type Multiaddr } from '@multiformats/multiaddr'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import type { Logger } from '../blockstack/cache.js'
import type { Clock } from './clock.js'
import { WireDecodeError } from './errors.js'
import type { P2PNode } from './node.js'

export const PEER_EXCHANGE_PROTOCOL = '/vmthunder/peers/1'
/** Peers in one answer. */
export const MAX_PEX_PEERS = 32
/** Addresses per peer in one answer. */
export const MAX_PEX_ADDRS = 4
/** A peer id's string form is 52 characters (Ed25519) or 46 (RSA, SHA-256). */
export const MAX_PEX_ID_BYTES = 128
/** A longer multiaddr is left out (a TCP address is 9-20 bytes). */
export const MAX_PEX_ADDR_BYTES = 64
/** The largest answer: every field at its bound. */
export const MAX_PEX_MESSAGE_BYTES = 1 + MAX_PEX_PEERS * (1 + MAX_PEX_ID_BYTES + 1 + MAX_PEX_ADDRS * (1 + MAX_PEX_ADDR_BYTES))
/** Connections an agent dials up to from what peers tell it (more come in as others dial it). */
export const DEFAULT_PEX_TARGET_CONNECTIONS = 16
/** While under its target, an agent looks this often for a peer due to be asked again. */
export const PEX_TICK_MS = 250
/**
 * A peer is asked again after PEX_FIRST_REASK_MS, then after twice as long each time, up to PEX_REASK_MS. Why
 * not once a minute from the start: agents that start together all ask their bootstrap peer at once, before it
 * knows the others (the testbed: 8 hosts within ~100 ms), and got a short list; asked again a moment later it
 * names them all. Why so soon: the testbed's wave began 1.6 s after the agents started, and with a first re-ask
 * after 1 s (on a 1 s tick) some hosts still had the origin alone at GO.
 */
export const PEX_FIRST_REASK_MS = 250
export const PEX_REASK_MS = 60_000
/**
 * Peers are re-asked that fast only while the swarm changes: within this long of the last news (a connection
 * opened, or an answer named an agent we were neither connected to nor dialling); after that, a peer asked
 * before is asked again only PEX_REASK_MS after its last ask. Why: each ask is a libp2p stream, and each answer
 * the asker's peer store lookups of every peer it lists; in the 8-host testbed (9 agents, never at the target of
 * 16) every agent went on asking 4 times a second through the wave, and the host agents' CPU was 13 % higher
 * (11.6 against 10.1 CPU-s in all, 3 interleaved pairs at 1 Gb/s, against a target of 8 that they reach).
 * Agents that join later are not missed: they ask their own peers and dial the agents they hear of.
 */
export const PEX_SETTLE_MS = 1000
/**
 * Settled, the tick looks at the connections at most this often, or when the first connected peer falls due.
 * Why: a tick lists the connections, and four ticks a second were a fifth of an idle agent's CPU.
 */
export const PEX_IDLE_TICK_MS = 5000

/**
 * When the timer ticks next, after a tick (ms from now; undefined: not until connected() wakes it). Every
 * PEX_TICK_MS while the swarm changes (news within PEX_SETTLE_MS); settled, when the first connected peer falls
 * due (quietUntilMs), at most PEX_IDLE_TICK_MS away. Settled with no connection there is nobody to ask: no tick
 * until a connection opens (an agent alone at rest wakes for nothing).
 */
export function nextTickDelayMs (nowMs: number, newsAtMs: number, quietUntilMs: number, connections: number): number | undefined {
  if (nowMs - newsAtMs < PEX_SETTLE_MS) return PEX_TICK_MS
  if (connections === 0) return undefined
  return Math.max(PEX_TICK_MS, Math.min(PEX_IDLE_TICK_MS, quietUntilMs - nowMs))
}
/** A peer gets one answer per this interval (below the first re-ask); more often, an empty list. */
export const PEX_SERVE_INTERVAL_MS = 200
export const PEX_REQUEST_TIMEOUT_MS = 5000
export const PEX_DIAL_TIMEOUT_MS = 5000
export const MAX_PARALLEL_PEX_DIALS = 4
/** Peers remembered as asked (and served); the oldest go first. */
const MAX_TRACKED_PEERS = 1024

/** A peer-exchange answer that does not decode. */
export class PeerListDecodeError extends WireDecodeError {
  override name = 'PeerListDecodeError'
}

export interface PeerListEntry {
  peerId: PeerId
  addrs: Multiaddr[]
}

export function encodePeerList (entries: readonly PeerListEntry[]): Uint8Array {
  const parts: Uint8Array[] = [Uint8Array.of(Math.min(entries.length, MAX_PEX_PEERS))]
  for (const entry of entries.slice(0, MAX_PEX_PEERS)) {
    const id = new TextEncoder().encode(entry.peerId.toString())
    if (id.byteLength > MAX_PEX_ID_BYTES) throw new RangeError(`peer id of ${id.byteLength} bytes`)
    const addrs = entry.addrs.map(a => a.bytes).filter(b => b.byteLength <= MAX_PEX_ADDR_BYTES).slice(0, MAX_PEX_ADDRS)
    parts.push(Uint8Array.of(id.byteLength), id, Uint8Array.of(addrs.length))
    for (const a of addrs) parts.push(Uint8Array.of(a.byteLength), a)
  }
  return Buffer.concat(parts)
}

/** Decodes an answer strictly: every field within its bound, nothing left over. */
export function decodePeerList (bytes: Uint8Array): PeerListEntry[] {
  if (bytes.byteLength > MAX_PEX_MESSAGE_BYTES) throw new PeerListDecodeError(`peer list of ${bytes.byteLength} bytes`)
  let at = 0
  const take = (n: number, what: string): Uint8Array => {
    if (at + n > bytes.byteLength) throw new PeerListDecodeError(`peer list ends inside ${what}`)
    const out = bytes.subarray(at, at + n)
    at += n
    return out
  }
  const u8 = (what: string): number => take(1, what)[0]
  const count = u8('the count')
  if (count > MAX_PEX_PEERS) throw new PeerListDecodeError(`peer list of ${count} peers (at most ${MAX_PEX_PEERS})`)
  const out: PeerListEntry[] = []
  for (let i = 0; i < count; i++) {
    const idLength = u8('a peer id length')
    if (idLength > MAX_PEX_ID_BYTES) throw new PeerListDecodeError(`peer id of ${idLength} bytes (at most ${MAX_PEX_ID_BYTES})`)
    const idBytes = take(idLength, 'a peer id')
    let peerId: PeerId
    try {
      peerId = peerIdFromString(new TextDecoder('utf-8', { fatal: true }).decode(idBytes))
    } catch (err) {
      throw new PeerListDecodeError(`bad peer id in a peer list: ${(err as Error).message}`)
    }
    const addrCount = u8('an address count')
    if (addrCount > MAX_PEX_ADDRS) throw new PeerListDecodeError(`${addrCount} addresses for one peer (at most ${MAX_PEX_ADDRS})`)
    const addrs: Multiaddr[] = []
    for (let k = 0; k < addrCount; k++) {
      const length = u8('an address length')
      if (length > MAX_PEX_ADDR_BYTES) throw new PeerListDecodeError(`address of ${length} bytes (at most ${MAX_PEX_ADDR_BYTES})`)
      try {
        addrs.push(multiaddr(take(length, 'an address')))
      } catch (err) {
        if (err instanceof PeerListDecodeError) throw err
        throw new PeerListDecodeError(`bad address in a peer list: ${(err as Error).message}`)
      }
    }
    out.push({ peerId, addrs })
  }
  if (at !== bytes.byteLength) throw new PeerListDecodeError(`${bytes.byteLength - at} bytes after a peer list`)
  return out
}

const isLoopback = (addr: Multiaddr): boolean => {
  const text = addr.toString()
  return text.startsWith('/ip4/127.') || text.startsWith('/ip6/::1/')
}

/** Asks one peer for its list (one stream); throws PeerListDecodeError on a bad answer, or the dial's error. */
export async function requestPeerList (node: P2PNode, peer: PeerId, signal: AbortSignal): Promise<PeerListEntry[]> {
  const stream = await node.dialProtocol(peer, PEER_EXCHANGE_PROTOCOL, { signal })
  try {
    const lp = lpStream(stream, { maxDataLength: MAX_PEX_MESSAGE_BYTES, maxBufferSize: MAX_PEX_MESSAGE_BYTES + 16 })
    const entries = decodePeerList((await lp.read({ signal })).subarray())
    await stream.close({ signal }).catch(() => {})
    return entries
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

export interface PeerExchangeInit {
  node: () => P2PNode | undefined
  selfPeerId: string
  isBanned: (peerId: string) => boolean
  /** Protocols a peer must have told us (identify) to be listed: an agent, not any libp2p node. */
  agentProtocol: string
  logger: Logger
  clock: Clock
  random: () => number
  /** Aborted when the service stops. */
  signal: AbortSignal
  targetConnections?: number
}

export interface PeerExchange {
  start: () => void
  stop: () => void
  /** Serves one request. */
  handle: (stream: Stream, connection: Connection) => Promise<void>
  /** A connection to `peerId` opened: ask it (bounded by the target and its re-ask time); resolves once asked (dials go on). */
  connected: (peerId: string) => Promise<void>
  /** Asks one peer that is due, if under the target (the timer does every PEX_TICK_MS); resolves once asked. */
  tick: () => Promise<void>
  stats: () => { asked: number, served: number, dialled: number, connectedByExchange: number, failed: number }
}

export function createPeerExchange (init: PeerExchangeInit): PeerExchange {
  const target = init.targetConnections ?? DEFAULT_PEX_TARGET_CONNECTIONS
  /** Per peer asked: when it was, and how long after that it may be asked again while the swarm changes. */
  const asks = new Map<string, { askedAtMs: number, waitMs: number }>()
  /** The last news: a connection opened, or an answer named an agent we neither had nor were dialling. */
  let newsAtMs = -Infinity
  /** Settled (no news), the timer's ticks skip the connection list until then (see tick). */
  let quietUntilMs = -Infinity
  const servedAt = new Map<string, number>()
  const dialling = new Set<string>()
  /** Listed peers not dialled yet (at most MAX_PEX_PEERS; the oldest go first). */
  const queued = new Map<string, PeerListEntry>()
  let timer: NodeJS.Timeout | undefined
  let asked = 0
  let served = 0
  let dialled = 0
  let connectedByExchange = 0
  let failed = 0

  /** Sets `key` as the newest entry; the oldest goes beyond MAX_TRACKED_PEERS. */
  const remember = <V>(map: Map<string, V>, key: string, value: V): void => {
    map.delete(key)
    map.set(key, value)
    if (map.size > MAX_TRACKED_PEERS) map.delete(map.keys().next().value as string)
  }

  const connectedPeers = (node: P2PNode): Set<string> => new Set(node.getConnections().map(c => c.remotePeer.toString()))

  /** A peer never asked is due; one asked before, at its doubling wait while the swarm changes, else once a minute. */
  const due = (peer: string, nowMs: number): boolean => {
    const last = asks.get(peer)
    if (last === undefined) return true
    if (nowMs - newsAtMs < PEX_SETTLE_MS) return nowMs - last.askedAtMs >= last.waitMs
    return nowMs - last.askedAtMs >= PEX_REASK_MS
  }

  // ---- server ----
  const listFor = async (node: P2PNode, requester: string, loopbackOk: boolean): Promise<PeerListEntry[]> => {
    const out: PeerListEntry[] = []
    const candidates = [...connectedPeers(node)].filter(p => p !== requester && !init.isBanned(p))
    // A random sample when there are more than fit: answers spread the connections over the swarm.
    for (let i = candidates.length - 1; i > 0; i--) {
      const k = Math.floor(init.random() * (i + 1));
      [candidates[i], candidates[k]] = [candidates[k], candidates[i]]
    }
    for (const peer of candidates) {
      if (out.length >= MAX_PEX_PEERS) break
      try {
        const peerId = peerIdFromString(peer)
        const info = await node.peerStore.get(peerId)
        // Agents only, as identify told us (a peer not identified yet has no listen addresses here either).
        if (!info.protocols.includes(init.agentProtocol)) continue
        const addrs = info.addresses.map(a => a.multiaddr)
          .filter(a => a.bytes.byteLength <= MAX_PEX_ADDR_BYTES && !a.toString().includes('/p2p-circuit') && (loopbackOk || !isLoopback(a)))
          .slice(0, MAX_PEX_ADDRS)
        if (addrs.length > 0) out.push({ peerId, addrs })
      } catch {}
    }
    return out
  }

  const handle = async (stream: Stream, connection: Connection): Promise<void> => {
    const peer = connection.remotePeer.toString()
    const signal = AbortSignal.any([init.signal, AbortSignal.timeout(PEX_REQUEST_TIMEOUT_MS)])
    try {
      const node = init.node()
      const nowMs = init.clock.nowMs()
      const last = servedAt.get(peer)
      let entries: PeerListEntry[] = []
      if (node !== undefined && !init.isBanned(peer) && (last === undefined || nowMs - last >= PEX_SERVE_INTERVAL_MS)) {
        remember(servedAt, peer, nowMs)
        entries = await listFor(node, peer, isLoopback(connection.remoteAddr))
        served++
      }
      const lp = lpStream(stream, { maxDataLength: MAX_PEX_MESSAGE_BYTES })
      await lp.write(encodePeerList(entries), { signal })
      await stream.close({ signal })
    } catch (err) {
      failed++
      stream.abort(err as Error)
    }
  }

  // ---- client ----
  const dial = (node: P2PNode, entry: PeerListEntry): void => {
    const id = entry.peerId.toString()
    dialling.add(id)
    dialled++
    const signal = AbortSignal.any([init.signal, AbortSignal.timeout(PEX_DIAL_TIMEOUT_MS)])
    void (async () => {
      try {
        await node.peerStore.merge(entry.peerId, { multiaddrs: entry.addrs })
        await node.dial(entry.peerId, { signal })
        connectedByExchange++
      } catch {
        // Unreachable from here (another network, gone): that peer's own dials or adverts may still connect us.
        failed++
      } finally {
        dialling.delete(id)
        dialQueued(node)
      }
    })()
  }

  const ask = async (peer: string): Promise<void> => {
    const node = init.node()
    if (node === undefined || init.signal.aborted) return
    const nowMs = init.clock.nowMs()
    const last = asks.get(peer)
    remember(asks, peer, { askedAtMs: nowMs, waitMs: last === undefined ? PEX_FIRST_REASK_MS : Math.min(PEX_REASK_MS, last.waitMs * 2) })
    asked++
    let entries: PeerListEntry[]
    try {
      entries = await requestPeerList(node, peerIdFromString(peer), AbortSignal.any([init.signal, AbortSignal.timeout(PEX_REQUEST_TIMEOUT_MS)]))
    } catch (err) {
      failed++
      // A list that does not decode is the peer's fault; an older agent without the protocol, or a timeout on a
      // busy peer, is not worth a line: either way it is asked again later, less and less often.
      if (err instanceof PeerListDecodeError) init.logger.warn('bad peer list', { peer, error: err.message })
      return
    }
    const have = connectedPeers(node)
    for (const entry of entries) {
      const id = entry.peerId.toString()
      if (id === init.selfPeerId || init.isBanned(id) || queued.has(id)) continue
      if (!have.has(id) && !dialling.has(id)) { newsAtMs = init.clock.nowMs(); wake() }
      if (queued.size >= MAX_PEX_PEERS) queued.delete(queued.keys().next().value as string)
      queued.set(id, entry)
    }
    dialQueued(node)
  }

  /** Dials queued peers while under the target, MAX_PARALLEL_PEX_DIALS at a time. */
  const dialQueued = (node: P2PNode): void => {
    const connected = connectedPeers(node)
    for (const [id, entry] of queued) {
      if (init.signal.aborted || !underTarget(connected) || dialling.size >= MAX_PARALLEL_PEX_DIALS) return
      queued.delete(id)
      if (connected.has(id) || dialling.has(id) || init.isBanned(id)) continue
      dial(node, entry)
    }
  }

  /** Connections and dials in progress are below the target (`connected`: connectedPeers of now). */
  const underTarget = (connected: ReadonlySet<string>): boolean => connected.size + dialling.size < target

  const connected = async (peerId: string): Promise<void> => {
    const node = init.node()
    if (node === undefined || init.signal.aborted) return
    newsAtMs = init.clock.nowMs()
    wake()
    if (!underTarget(connectedPeers(node)) || init.isBanned(peerId)) return
    const last = asks.get(peerId)
    if (last !== undefined && init.clock.nowMs() - last.askedAtMs < last.waitMs) return
    await ask(peerId)
  }

  const tick = async (): Promise<void> => {
    const node = init.node()
    if (node === undefined || init.signal.aborted) return
    const nowMs = init.clock.nowMs()
    const settled = nowMs - newsAtMs >= PEX_SETTLE_MS
    if (settled && nowMs < quietUntilMs) return
    const peers = connectedPeers(node)
    if (settled) {
      // Nothing is due before the first connected peer's re-ask; look again then, or after PEX_IDLE_TICK_MS
      // (a connection that closed may have put us under the target).
      quietUntilMs = nowMs + PEX_IDLE_TICK_MS
      for (const peer of peers) {
        const last = asks.get(peer)
        quietUntilMs = Math.min(quietUntilMs, last === undefined ? nowMs : last.askedAtMs + PEX_REASK_MS)
      }
    }
    if (!underTarget(peers)) return
    const dueNow = [...peers].filter(p => !init.isBanned(p) && due(p, nowMs))
    if (dueNow.length > 0) await ask(dueNow[Math.floor(init.random() * dueNow.length)])
  }

  // The timer: every PEX_TICK_MS while the swarm changes; settled, when tick() says the first peer falls due. A
  // timer that is due later than news needs is brought forward (wake()).
  let running = false
  let timerDueMs = Infinity
  const arm = (delayMs: number): void => {
    if (!running) return
    const dueMs = init.clock.nowMs() + delayMs
    if (timer !== undefined && timerDueMs <= dueMs) return
    if (timer !== undefined) clearTimeout(timer)
    timerDueMs = dueMs
    timer = setTimeout(() => {
      timer = undefined
      timerDueMs = Infinity
      void tick().finally(() => {
        const delayMs = nextTickDelayMs(init.clock.nowMs(), newsAtMs, quietUntilMs, init.node()?.getConnections().length ?? 0)
        if (delayMs !== undefined) arm(delayMs)
      })
    }, delayMs)
    timer.unref()
  }
  function wake (): void { arm(PEX_TICK_MS) }

  return {
    start: () => {
      running = true
      arm(PEX_TICK_MS)
    },
    stop: () => {
      running = false
      if (timer !== undefined) clearTimeout(timer)
      timer = undefined
      queued.clear()
    },
    handle,
    connected,
    tick,
    stats: () => ({ asked, served, dialled, connectedByExchange, failed })
  }
}
