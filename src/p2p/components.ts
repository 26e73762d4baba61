// What the parts of the p2p service share (js-libp2p's "components"): the per-image state, the peer book
// (links and bans), the wake-up bus, and the libp2p node once started. Each part of the service
// (adverts, heartbeat, children, relay, directory, manifest finder, profile fetcher) is built as
// `createX(init)(components)` and reaches the others only through the narrow functions it is given.

import type { Manifest } from '../blockstack/manifest.js'
import type { BlockStore, FetchPriority } from '../blockstack/types.js'
import type { Logger } from '../blockstack/cache.js'
import { advertLifetimeMs, type ParentState, type TopologyParams } from '../topology/index.js'
import type { AdvertBody } from './advert.js'
import type { P2PNode } from './node.js'
import type { PeerLink } from './peer-link.js'
import type { Clock } from './clock.js'
import type { ServiceEvents } from './events.js'
import type { AdvertFacts, ForcedBudget } from './advert-policy.js'

/**
 * The stores the service can serve; BlockCache fits. onBlocksAdded makes adverts follow new blocks; ensure
 * (fetch missing blocks through this agent's own source, one shared fetch per block) makes it a relay.
 */
export type ServedStore = BlockStore & {
  onBlocksAdded?: (listener: (blockIndexes: readonly number[]) => void) => () => void
  ensure?: (blockIndexes: readonly number[], options: { signal: AbortSignal, priority?: FetchPriority }) => Promise<void>
}

export interface CandidateEntry {
  advert: AdvertBody
  receivedAtMs: number
  /** The sender hung up after this advert (dropLifetime): its next advert says it is back (adverts.ts). */
  hungUp?: boolean
}

/**
 * The peer hung up: its advert keeps only our own timeout from its receipt, not the longer lifetime it gave
 * (a quiet seed's advert lives up to 3 minutes; a dead one must not stay a candidate parent that long). A peer
 * that comes back re-subscribes, and its answer to that (adverts.ts publishForced) brings a fresh advert.
 */
export function dropLifetime (entry: CandidateEntry): void {
  entry.hungUp = true
  if (entry.advert.lifetimeMs !== undefined) entry.advert = { ...entry.advert, lifetimeMs: undefined }
}

/** The entry's advert still counts: received within its lifetime (src/topology/freshness.ts). */
export function isFreshEntry (entry: CandidateEntry, nowMs: number, params: Pick<TopologyParams, 'advertTimeoutMs'>): boolean {
  return nowMs - entry.receivedAtMs <= advertLifetimeMs(entry.advert, params)
}

/** How long a count of the peers booting an image is reused at most, while no advert or connection changed it. */
export const BOOTING_COUNT_TTL_MS = 100

/**
 * The peers booting an image (countBootingPeers in service.ts), counted afresh only when something it depends on
 * changed: `epoch` (ServiceEvents.sourcesEpoch: an advert, a connection, a ban) moved, or BOOTING_COUNT_TTL_MS
 * passed (an advert that goes stale changes it without an event). Why: the prefetcher asks on every tick (each VM
 * read), twice, and a count walks every candidate (0.9 % of the host agents' perf samples in the 8-host wave).
 */
export function bootingPeersCached (state: Pick<ImageState, 'bootingCount'>, nowMs: number, epoch: number, count: () => number): number {
  const last = state.bootingCount
  if (last !== undefined && last.epoch === epoch && nowMs >= last.atMs && nowMs - last.atMs < BOOTING_COUNT_TTL_MS) return last.peers
  const peers = count()
  state.bootingCount = { atMs: nowMs, epoch, peers }
  return peers
}

export interface ImageState {
  imageId: string
  topic: string
  manifest?: Manifest
  store?: ServedStore
  unsubscribeBlocks?: () => void
  seq: number
  candidates: Map<string, CandidateEntry>
  /**
   * Peers booting the image, as last counted (service.ts countBootingPeers): reused while no advert, connection
   * or ban came in since (the sources epoch) and for at most BOOTING_COUNT_TTL_MS (adverts also go stale).
   */
  bootingCount?: { atMs: number, epoch: number, peers: number }
  lastSeq: Map<string, number>
  parents: ParentState[]
  depth: number | null
  /** Since when the orphan hold keeps our depth with no parent (src/topology/driver.ts); null: not held. */
  orphanedSinceMs: number | null
  /** peerId -> lease expiry (ms). */
  children: Map<string, number>
  /** peerId -> the parents the child said it stripes over (its last ADMIT); read for live children only. */
  childParentCounts: Map<string, number>
  /** peerId -> excluded until (ms): refused admission. */
  refused: Map<string, number>
  bytesSent: number
  bytesReceived: number
  bytesReceivedByPeer: Map<string, number>
  lastPublishMs: number
  publishTimer?: NodeJS.Timeout
  /** What the last published advert said (the publish policy compares against it). */
  lastPublished?: AdvertFacts
  /** When the pending publish timer fires (ms). */
  publishDueMs?: number
  /** A peer subscribed since the last advert: publish soon whatever changed. */
  advertForced: boolean
  /** What is left of the budget for forced adverts sooner than minIntervalMs (advert-policy.ts). */
  forcedBudget?: ForcedBudget
  /** The keep-alive interval after our last advert (advert-policy.ts: it grows while nothing changes). */
  keepAliveMs: number
  advertsPublished: number
  heartbeatRunning: boolean
  /** A heartbeat asked for while one ran: run again after. */
  heartbeatAgain: boolean
  interestOnly: boolean
  addedAtMs: number
  /** We have had a parent for this image since it was added: the attach grace (directory.ts) is over. */
  attachedOnce: boolean
  /** This image's child limit when it differs from the service's. */
  childLimit?: number
  profileFetching: boolean
  lastProfileFetchMs: number
  /** peerId -> not asked for profiles until (ms). */
  profileExcluded: Map<string, number>
  profileVersionsSeen: Set<string>
  profilesFetched: number
}

/** Links (one reused block stream per peer) and bans. */
export interface PeerBook {
  link: (peerId: string) => PeerLink
  /** The link if one is open (no dial). */
  existingLink: (peerId: string) => PeerLink | undefined
  closeLink: (peerId: string) => void
  isBanned: (peerId: string) => boolean
  banned: () => string[]
}

export interface ServiceComponents {
  selfPeerId: string
  logger: Logger
  clock: Clock
  random: () => number
  params: TopologyParams
  images: Map<string, ImageState>
  byRoot: Map<string, ImageState>
  peers: PeerBook
  /** Peers with an open connection now (kept by connect/disconnect events: no per-block getPeers()). */
  connected: Set<string>
  /**
   * Per connected peer, a number new at each (re)connection (from one counter): a block job asks a peer that
   * failed it again once the peer is back on a new connection (a restarted seed). Bounded by connected peers.
   */
  connectionEpochs: Map<string, number>
  events: ServiceEvents
  /** Aborted when the service stops: everything long-lived listens on it. */
  stopSignal: AbortSignal
  /** The node, once started. */
  node: () => P2PNode | undefined
  /** The node, or ServiceStoppedError. */
  requireNode: () => P2PNode
  stopped: () => boolean
}

export const heldBlocks = (state: ImageState): number => state.store?.presentCount() ?? 0

export const isSeed = (state: ImageState): boolean =>
  state.manifest !== undefined && state.store !== undefined && heldBlocks(state) === state.manifest.blockCount

export function newImageState (imageId: string, topic: string, nowMs: number): ImageState {
  return {
    imageId,
    topic,
    seq: 0,
    candidates: new Map(),
    lastSeq: new Map(),
    parents: [],
    depth: null,
    orphanedSinceMs: null,
    children: new Map(),
    childParentCounts: new Map(),
    refused: new Map(),
    bytesSent: 0,
    bytesReceived: 0,
    bytesReceivedByPeer: new Map(),
    lastPublishMs: -Infinity,
    advertForced: false,
    keepAliveMs: 0,
    advertsPublished: 0,
    heartbeatRunning: false,
    heartbeatAgain: false,
    interestOnly: true,
    addedAtMs: nowMs,
    attachedOnce: false,
    profileFetching: false,
    lastProfileFetchMs: -Infinity,
    profileExcluded: new Map(),
    profileVersionsSeen: new Set(),
    profilesFetched: 0
  }
}
