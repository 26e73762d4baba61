// The p2p service the daemon runs: one libp2p node, the block and manifest protocols, gossip adverts per image,
// and the per-image heartbeat that keeps this agent's place in each image's tree.
//
// Heartbeat of an image (every heartbeatMs; also early when the first adverts arrive):
//   1. measure RTT to a bounded number of candidates (ping on the reused block stream);
//   2. selectParents (src/topology) with the fresh adverts, RTTs, current parents, exclusions;
//   3. ask admission of new parents (they may refuse: bounded fan-out), renew the lease of kept ones (a failed
//      renewal marks the parent failed, so it is replaced at the next step), tell dropped ones we left;
//   4. publish our advert (also published on change, rate-limited: blocks added, parents changed).
// A parent keeps a child while its lease is renewed (3 heartbeats). An agent holding every block is a seed
// (depth 0) and has no parents. Blocks come through `blockSource` (PeerSource), which stripes over parents
// and falls back to any advertiser. A peer that served a corrupt block is banned for banMs: dropped as
// parent, disconnected, refused at the connection gater, and given a large negative gossipsub app score.

import '../polyfill.js'
import { setMaxListeners } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import type { PeerId } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import type { Identity } from '../identity/key.js'
import type { Manifest } from '../blockstack/manifest.js'
import type { BlockSource, BlockStore } from '../blockstack/types.js'
import { silentLogger, type Logger, type BlockCache } from '../blockstack/cache.js'
import {
  DEFAULT_TOPOLOGY_PARAMS, admitChild, planHeartbeat, settleHeartbeat,
  type AdmissionReply, type Candidate, type ParentState, type TopologyParams
} from '../topology/index.js'
import { createNode, imageTopicScoreParams, Bootstrapper, type Encryption, type P2PNode } from './node.js'
import { readPskFile } from './psk.js'
import {
  encodeAdvert, holdProbability, imageIdFromTopic, imageTopic, summarize, toTopologyAdvert, validateAdvert, type AdvertBody
} from './advert.js'
import { serveBlockStream, type AdmitReply } from './block-server.js'
import { PeerLink } from './peer-link.js'
import { PeerSource, type PeerDirectory, type SourceInfo } from './peer-source.js'
import { fetchManifestFrom, serveManifestStream, MANIFEST_PROTOCOL, MANIFEST_FETCH_TIMEOUT_MS } from './manifest-protocol.js'
import { BLOCKS_PROTOCOL } from './wire.js'
import {
  PROFILE_PROTOCOL, PROFILE_FETCH_TIMEOUT_MS, MAX_PROFILE_WIRE_BYTES, createProfileServer, fetchProfileFrom, type ProfileProvider
} from './profile-protocol.js'
import { RateMeter, TokenBucket } from './rate-limit.js'
import { systemClock, type Clock } from './clock.js'
import { ManifestUnavailableError, ServiceStoppedError } from './errors.js'
import type { SchedulerParams } from '../topology/scheduler.js'

export const DEFAULT_BAN_MS = 10 * 60_000
/** Adverts are published at most this often on change (plus every heartbeat). */
export const DEFAULT_MIN_ADVERT_INTERVAL_MS = 250
/** Upload capacity assumed for the advertised load when no upload limit is set (1 Gb/s). */
export const DEFAULT_UPLOAD_CAPACITY_BYTES_PER_SEC = 125_000_000
/** RTT probes per image per heartbeat (bounded work per heartbeat). */
const MAX_PROBES_PER_HEARTBEAT = 8
/** A child's lease lasts this many heartbeats without renewal. */
const CHILD_LEASE_HEARTBEATS = 3
const MAX_MANIFEST_PEERS_TRIED = 16
/** A relayed fetch (for a child) that takes longer is abandoned: the child's request gets 'not present'. */
const RELAY_TIMEOUT_MS = 20_000
/** After an image is added, blocks wait this many heartbeats for the first parents before other peers are asked. */
const ATTACH_GRACE_HEARTBEATS = 3
const MIN_ATTACH_GRACE_MS = 5000
/** Admission and probes may need a new connection (handshake) on a busy host: not bounded by a short heartbeat. */
const MIN_EXCHANGE_TIMEOUT_MS = 2000
/** Profile fetches: at most one in flight per image, one start per image per interval, this many per minute in all. */
const PROFILE_FETCH_INTERVAL_MS = 2000
const MAX_PROFILE_FETCHES_PER_MINUTE = 30
/** A peer whose profile did not decode or fit is not asked again for this long; one that was busy or had none, briefly. */
const PROFILE_BAD_EXCLUDE_MS = 10 * 60_000
const PROFILE_FAILED_EXCLUDE_MS = 5000
/** Profile versions remembered per image as already fetched (adopted or not needed). */
const MAX_PROFILE_VERSIONS_SEEN = 64

/** The stores the service can serve; BlockCache fits (onBlocksAdded makes adverts follow new blocks). */
export type ServedStore = BlockStore & {
  onBlocksAdded?: (listener: (blockIndexes: readonly number[]) => void) => () => void
}

export interface P2PServiceInit {
  identity: Identity
  listen: readonly string[]
  bootstrap?: readonly string[]
  /** Path of a PSK file (swarm.key format): only holders of the same key can connect. */
  pskFile?: string
  /** PSK bytes directly (instead of pskFile). */
  psk?: Uint8Array
  /** 'plaintext' only as an operator's explicit choice for trusted networks (blocks are verified anyway). */
  encryption?: Encryption
  /** Origin keys whose manifests are accepted (raw 32 bytes); this agent's own key is always trusted. */
  trustedKeys?: readonly Uint8Array[]
  topologyParams?: Partial<TopologyParams>
  scheduler?: Partial<SchedulerParams>
  uploadLimitBytesPerSec?: number
  downloadLimitBytesPerSec?: number
  /** Per image; overrides topologyParams.childLimit. */
  childLimit?: number
  /** Overrides topologyParams.heartbeatMs. */
  heartbeatMs?: number
  banMs?: number
  logger?: Logger
  clock?: Clock
  random?: () => number
  ipColocationPenalty?: boolean
  maxConnections?: number
  /** Tuning (benchmarks). */
  yamuxMaxMessageBytes?: number
  frameBudgetBytes?: number
  maxRequestBytes?: number
  /** Boot profiles: advertised, served over /vmthunder/profile/1, and fetched from peers that advertise newer ones. */
  profiles?: ProfileProvider
}

export interface ImageStatus {
  imageId: string
  rootHex: string
  heldFraction: number
  depth: number | null
  parents: string[]
  children: string[]
  bytesSent: number
  bytesReceived: number
  bytesReceivedByPeer: Record<string, number>
  /** Peers that advertise the image. */
  candidates: number
  /** Version of this agent's boot profile of the image (null: none yet). */
  profileVersion?: string | null
  /** Profiles fetched from peers for this image. */
  profilesFetched?: number
}

export interface P2PStatus {
  peerId: string
  publicKeyHex: string
  listenAddrs: string[]
  peers: string[]
  banned: string[]
  images: Record<string, ImageStatus>
}

export interface P2PService {
  start: () => Promise<void>
  stop: () => Promise<void>
  readonly blockSource: BlockSource
  /** `childLimit` overrides the service's limit for this image (the origin keeps its fan-out small). */
  addImage: (store: ServedStore, options?: { childLimit?: number }) => void
  removeImage: (imageId: string) => void
  fetchManifest: (imageId: string, options: { signal: AbortSignal }) => Promise<Manifest>
  status: () => P2PStatus
  readonly peerId: string
  multiaddrs: () => string[]
  /** The libp2p node (started); for tests and tools. */
  node: () => P2PNode
  /** Bans a peer now (as a corrupt block would). */
  ban: (peerId: string, reason: string) => void
  /** Resolves once `predicate` holds, checked on every advert, heartbeat and block event; rejects on abort. */
  waitFor: (predicate: () => boolean, signal: AbortSignal) => Promise<void>
  readonly peerSource: PeerSource
  /** The agent's profile of an image changed: advertise it now. */
  profileChanged: (imageId: string) => void
}

interface CandidateEntry {
  advert: AdvertBody
  receivedAtMs: number
}

interface ImageState {
  imageId: string
  topic: string
  manifest?: Manifest
  store?: ServedStore
  unsubscribeBlocks?: () => void
  seq: number
  candidates: Map<string, CandidateEntry>
  lastSeq: Map<string, number>
  parents: ParentState[]
  depth: number | null
  /** peerId -> lease expiry (ms). */
  children: Map<string, number>
  /** peerId -> excluded until (ms): refused admission. */
  refused: Map<string, number>
  bytesSent: number
  bytesReceived: number
  bytesReceivedByPeer: Map<string, number>
  lastPublishMs: number
  publishTimer?: NodeJS.Timeout
  heartbeatRunning: boolean
  /** A heartbeat asked for while one ran: run again after. */
  heartbeatAgain: boolean
  interestOnly: boolean
  addedAtMs: number
  /** This image's child limit when it differs from the service's. */
  childLimit?: number
  profileFetching: boolean
  lastProfileFetchMs: number
  /** peerId -> not asked for profiles until (ms). */
  profileExcluded: Map<string, number>
  profileVersionsSeen: Set<string>
  profilesFetched: number
}

/** Gossipsub's live topic score params (the GossipSub interface does not expose the score). */
function scoreTopics (pubsub: unknown): Record<string, unknown> {
  return (pubsub as { score: { params: { topics: Record<string, unknown> } } }).score.params.topics
}

export function createP2PService (init: P2PServiceInit): P2PService {
  const logger = init.logger ?? silentLogger
  const clock = init.clock ?? systemClock
  const random = init.random ?? Math.random
  const params: TopologyParams = {
    ...DEFAULT_TOPOLOGY_PARAMS,
    ...init.topologyParams,
    ...(init.childLimit !== undefined ? { childLimit: init.childLimit } : {}),
    ...(init.heartbeatMs !== undefined ? { heartbeatMs: init.heartbeatMs } : {})
  }
  if (params.advertTimeoutMs < params.heartbeatMs) params.advertTimeoutMs = 3 * params.heartbeatMs
  const banMs = init.banMs ?? DEFAULT_BAN_MS
  const selfPeerId = init.identity.peerId
  const trustedKeys = [init.identity.publicKey, ...(init.trustedKeys ?? [])]
  const uploadBucket = new TokenBucket(init.uploadLimitBytesPerSec, undefined, clock)
  const downloadBucket = new TokenBucket(init.downloadLimitBytesPerSec, undefined, clock)
  const uploadMeter = new RateMeter(2000, 10, clock)
  const uploadCapacity = init.uploadLimitBytesPerSec ?? DEFAULT_UPLOAD_CAPACITY_BYTES_PER_SEC
  const images = new Map<string, ImageState>()
  const byRoot = new Map<string, ImageState>()
  const links = new Map<string, PeerLink>()
  const bans = new Map<string, number>()
  const waiters = new Set<() => void>()
  const stopController = new AbortController()
  // Every stream, heartbeat and relay listens on it: one listener each, released when they end.
  setMaxListeners(Infinity, stopController.signal)
  let node: P2PNode | undefined
  let bootstrapper: Bootstrapper | undefined
  let heartbeatTimer: NodeJS.Timeout | undefined
  let started = false
  let stopped = false
  const profileFetchStarts: number[] = []

  const notify = (): void => {
    for (const wake of [...waiters]) wake()
  }

  const waitFor = async (predicate: () => boolean, signal: AbortSignal): Promise<void> => {
    while (!predicate()) {
      signal.throwIfAborted()
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => { cleanup(); resolve() }
        const onAbort = (): void => { cleanup(); reject(signal.reason) }
        const cleanup = (): void => { waiters.delete(wake); signal.removeEventListener('abort', onAbort) }
        waiters.add(wake)
        signal.addEventListener('abort', onAbort, { once: true })
      })
    }
  }

  const isBanned = (peerId: string): boolean => {
    const until = bans.get(peerId)
    if (until === undefined) return false
    if (clock.nowMs() >= until) { bans.delete(peerId); return false }
    return true
  }

  const requireNode = (): P2PNode => {
    if (node === undefined) throw new ServiceStoppedError('p2p service is not started')
    return node
  }

  const linkTo = (peerId: string): PeerLink => {
    let link = links.get(peerId)
    if (link === undefined || link.closed) {
      link = new PeerLink(requireNode(), peerIdFromString(peerId), logger, clock)
      links.set(peerId, link)
    }
    return link
  }

  const heldBlocks = (state: ImageState): number => state.store?.presentCount() ?? 0

  const isSeed = (state: ImageState): boolean =>
    state.manifest !== undefined && state.store !== undefined && heldBlocks(state) === state.manifest.blockCount

  const liveChildren = (state: ImageState): string[] => {
    const now = clock.nowMs()
    for (const [peer, expiry] of state.children) if (expiry <= now || isBanned(peer)) state.children.delete(peer)
    return [...state.children.keys()]
  }

  /** Our listen addresses for adverts, without the /p2p suffix; loopback last. */
  const advertAddrs = (): Uint8Array[] => {
    if (node === undefined) return []
    const addrs = node.getMultiaddrs().map(a => a.decapsulateCode(421))
    addrs.sort((a, b) => Number(a.toString().includes('/127.0.0.1/')) - Number(b.toString().includes('/127.0.0.1/')))
    const seen = new Set<string>()
    return addrs.filter(a => { const k = a.toString(); if (seen.has(k)) return false; seen.add(k); return true }).map(a => a.bytes)
  }

  const uploadLoad = (): number => Math.min(1, uploadMeter.bytesPerSec() / uploadCapacity)

  // ---- adverts ----

  const childLimitOf = (state: ImageState): number => state.childLimit ?? params.childLimit

  const buildAdvert = (state: ImageState): AdvertBody | undefined => {
    if (state.manifest === undefined || state.store === undefined) return undefined
    const total = state.manifest.blockCount
    const held = heldBlocks(state)
    state.seq = Math.max(state.seq + 1, Date.now())
    return {
      imageId: state.imageId,
      rootHex: state.manifest.rootHex,
      seq: state.seq,
      depth: isSeed(state) ? 0 : state.depth,
      heldBlocks: held,
      totalBlocks: total,
      childCount: Math.min(liveChildren(state).length, childLimitOf(state)),
      childLimit: childLimitOf(state),
      uploadLoad: uploadLoad(),
      manifestAvailable: true,
      summary: summarize(state.store.presentBitmap(), total),
      addrs: advertAddrs(),
      ...advertisedProfile(state.imageId)
    }
  }

  const advertisedProfile = (imageId: string): { profile?: AdvertBody['profile'] } => {
    const local = init.profiles?.local(imageId)
    if (local === undefined || local.bytes.byteLength === 0 || local.bytes.byteLength > MAX_PROFILE_WIRE_BYTES) return {}
    return { profile: { version: local.version, boots: Math.min(255, Math.max(1, local.boots)), sizeBytes: local.bytes.byteLength } }
  }

  // ---- boot profiles: fetch a newer one from a peer that advertises it (bounded, rate limited) ----

  const maybeFetchProfile = (state: ImageState): void => {
    const provider = init.profiles
    if (provider === undefined || node === undefined || stopped || state.store === undefined || state.profileFetching) return
    const nowMs = clock.nowMs()
    if (nowMs - state.lastProfileFetchMs < PROFILE_FETCH_INTERVAL_MS) return
    const local = provider.local(state.imageId)
    let best: { peer: string, profile: NonNullable<AdvertBody['profile']> } | undefined
    for (const [peer, entry] of state.candidates) {
      const p = entry.advert.profile
      if (p === undefined || isBanned(peer) || (state.profileExcluded.get(peer) ?? 0) > nowMs || state.profileVersionsSeen.has(p.version)) continue
      if (local !== undefined && (p.version === local.version || p.boots <= Math.min(255, local.boots))) continue
      if (node.getConnections(peerIdFromString(peer)).length === 0) continue
      if (best === undefined || p.boots > best.profile.boots) best = { peer, profile: p }
    }
    if (best === undefined) return
    while (profileFetchStarts.length > 0 && profileFetchStarts[0] <= nowMs - 60_000) profileFetchStarts.shift()
    if (profileFetchStarts.length >= MAX_PROFILE_FETCHES_PER_MINUTE) return
    profileFetchStarts.push(nowMs)
    state.profileFetching = true
    state.lastProfileFetchMs = nowMs
    const { peer, profile } = best
    void (async () => {
      try {
        const signal = AbortSignal.any([stopController.signal, AbortSignal.timeout(PROFILE_FETCH_TIMEOUT_MS)])
        const bytes = await fetchProfileFrom(requireNode(), peerIdFromString(peer), state.imageId, { signal, maxBytes: profile.sizeBytes })
        const adopted = await provider.adopt(state.imageId, bytes)
        state.profilesFetched++
        state.profileVersionsSeen.add(profile.version)
        if (state.profileVersionsSeen.size > MAX_PROFILE_VERSIONS_SEEN) state.profileVersionsSeen.delete(state.profileVersionsSeen.values().next().value as string)
        logger.info(adopted ? 'boot profile adopted from a peer' : 'peer profile not adopted', { image: state.imageId, peer, version: profile.version, boots: profile.boots })
      } catch (err) {
        if (stopped) return
        const name = (err as Error).name
        const bad = name === 'ProfileDecodeError' || name === 'ProfileMismatchError' || name === 'InvalidDataLengthError' || name === 'ProfileFetchError'
        state.profileExcluded.set(peer, clock.nowMs() + (bad ? PROFILE_BAD_EXCLUDE_MS : PROFILE_FAILED_EXCLUDE_MS))
        logger.warn('profile fetch failed', { image: state.imageId, peer, error: (err as Error).message, excludedMs: bad ? PROFILE_BAD_EXCLUDE_MS : PROFILE_FAILED_EXCLUDE_MS })
      } finally {
        state.profileFetching = false
        notify()
      }
    })()
  }

  const profileChanged = (imageId: string): void => {
    const state = images.get(imageId)
    if (state?.store !== undefined) publishSoon(state)
    notify()
  }

  const publish = (state: ImageState): void => {
    if (node === undefined || stopped) return
    if (state.publishTimer !== undefined) { clearTimeout(state.publishTimer); state.publishTimer = undefined }
    const advert = buildAdvert(state)
    if (advert === undefined) return
    state.lastPublishMs = clock.nowMs()
    node.services.pubsub.publish(state.topic, encodeAdvert(advert)).catch((err: Error) => {
      logger.warn('advert publish failed', { image: state.imageId, error: err.message })
    })
  }

  /** Publishes soon: at once if the last advert is old enough, else once the rate limit allows. */
  const publishSoon = (state: ImageState): void => {
    if (state.publishTimer !== undefined || node === undefined) return
    const wait = state.lastPublishMs + DEFAULT_MIN_ADVERT_INTERVAL_MS - clock.nowMs()
    if (wait <= 0) { publish(state); return }
    state.publishTimer = setTimeout(() => { state.publishTimer = undefined; publish(state) }, wait)
    state.publishTimer.unref()
  }

  const validator = (topic: string) => (from: PeerId, message: { type: string, data: Uint8Array, from?: PeerId }): TopicValidatorResult => {
    const state = images.get(imageIdFromTopic(topic) ?? '')
    if (state === undefined) return TopicValidatorResult.Ignore
    if (message.type !== 'signed' || message.from === undefined) return TopicValidatorResult.Reject
    const sender = message.from.toString()
    if (sender === selfPeerId) return TopicValidatorResult.Ignore
    if (isBanned(sender)) return TopicValidatorResult.Reject
    const verdict = validateAdvert(message.data, {
      topicImageId: state.imageId,
      manifest: state.manifest,
      lastSeq: state.lastSeq.get(sender)
    })
    if (!verdict.ok) {
      if (verdict.stale === true) return TopicValidatorResult.Ignore
      logger.warn('advert rejected', { image: state.imageId, sender, via: from.toString(), reason: verdict.reason })
      return TopicValidatorResult.Reject
    }
    state.lastSeq.set(sender, verdict.advert.seq)
    if (verdict.advert.addrs.length > 0 && node !== undefined && node.getConnections(message.from).length === 0) {
      // Learn how to dial the sender (we may only share a bootstrap peer with it).
      node.peerStore.merge(message.from, { multiaddrs: verdict.advert.addrs.map(addr => multiaddr(addr)) }).catch(() => {})
    }
    const previous = state.candidates.get(sender)
    state.candidates.set(sender, { advert: verdict.advert, receivedAtMs: clock.nowMs() })
    // A candidate that just became eligible (new, or attached: depth known) while we lack parents: select now
    // rather than at the next heartbeat.
    const newlyEligible = verdict.advert.depth !== null && (previous === undefined || previous.advert.depth === null)
    if (newlyEligible && state.parents.length < params.parentCount && state.store !== undefined && !isSeed(state)) scheduleHeartbeat(state)
    if (verdict.advert.profile !== undefined) maybeFetchProfile(state)
    notify()
    return TopicValidatorResult.Accept
  }

  // ---- images ----

  const ensureState = (imageId: string): ImageState => {
    let state = images.get(imageId)
    if (state === undefined) {
      state = {
        imageId,
        topic: imageTopic(imageId),
        seq: 0,
        candidates: new Map(),
        lastSeq: new Map(),
        parents: [],
        depth: null,
        children: new Map(),
        refused: new Map(),
        bytesSent: 0,
        bytesReceived: 0,
        bytesReceivedByPeer: new Map(),
        lastPublishMs: -Infinity,
        heartbeatRunning: false,
        heartbeatAgain: false,
        interestOnly: true,
        addedAtMs: clock.nowMs(),
        profileFetching: false,
        lastProfileFetchMs: -Infinity,
        profileExcluded: new Map(),
        profileVersionsSeen: new Set(),
        profilesFetched: 0
      }
      images.set(imageId, state)
      if (node !== undefined) subscribe(state)
    }
    return state
  }

  const subscribe = (state: ImageState): void => {
    const pubsub = requireNode().services.pubsub
    scoreTopics(pubsub)[state.topic] = imageTopicScoreParams()
    pubsub.topicValidators.set(state.topic, validator(state.topic) as any)
    pubsub.subscribe(state.topic)
  }

  const unsubscribe = (state: ImageState): void => {
    if (node === undefined) return
    const pubsub = node.services.pubsub
    pubsub.unsubscribe(state.topic)
    pubsub.topicValidators.delete(state.topic)
    delete scoreTopics(pubsub)[state.topic]
  }

  const addImage = (store: ServedStore, options: { childLimit?: number } = {}): void => {
    if (stopped) throw new ServiceStoppedError('p2p service is stopped')
    const manifest = store.manifest
    const state = ensureState(manifest.imageId)
    state.childLimit = options.childLimit
    if (state.store !== undefined && state.manifest?.rootHex !== manifest.rootHex) {
      throw new RangeError(`image ${manifest.imageId} is already served with another manifest`)
    }
    if (state.manifest !== undefined && state.manifest.rootHex !== manifest.rootHex) {
      // Interest was registered for the id only; adverts of another root are no longer candidates.
      for (const [peer, entry] of state.candidates) if (entry.advert.rootHex !== manifest.rootHex) state.candidates.delete(peer)
    }
    state.manifest = manifest
    state.store = store
    state.interestOnly = false
    state.addedAtMs = clock.nowMs()
    byRoot.set(manifest.rootHex, state)
    for (const [peer, entry] of state.candidates) {
      if (entry.advert.rootHex !== manifest.rootHex || entry.advert.totalBlocks !== manifest.blockCount) state.candidates.delete(peer)
    }
    state.unsubscribeBlocks?.()
    state.unsubscribeBlocks = store.onBlocksAdded?.(() => {
      publishSoon(state)
      notify()
    })
    if (isSeed(state)) state.depth = 0
    if (node !== undefined) {
      publishSoon(state)
      scheduleHeartbeat(state)
    }
    notify()
  }

  const removeImage = (imageId: string): void => {
    const state = images.get(imageId)
    if (state === undefined) return
    state.unsubscribeBlocks?.()
    if (state.publishTimer !== undefined) clearTimeout(state.publishTimer)
    if (state.manifest !== undefined) {
      byRoot.delete(state.manifest.rootHex)
      for (const parent of state.parents) void leaveParent(state, parent.peerId)
    }
    unsubscribe(state)
    images.delete(imageId)
    notify()
  }

  // ---- children (parent side) ----

  const admit = (peerId: string, rootHex: string, leave: boolean): AdmitReply | undefined => {
    const state = byRoot.get(rootHex)
    if (state === undefined || state.store === undefined) return undefined
    if (leave) {
      state.children.delete(peerId)
      publishSoon(state)
      return { accepted: false, childCount: liveChildren(state).length, childLimit: childLimitOf(state) }
    }
    const children = liveChildren(state)
    const isAlreadyChild = state.children.has(peerId)
    const result = admitChild({
      childCount: children.length,
      childLimit: childLimitOf(state),
      isAlreadyChild,
      isExcluded: isBanned(peerId),
      selfDepth: isSeed(state) ? 0 : state.depth
    })
    if (result.admit) {
      state.children.set(peerId, clock.nowMs() + CHILD_LEASE_HEARTBEATS * params.heartbeatMs)
      if (!isAlreadyChild) publishSoon(state)
    }
    return { accepted: result.admit, childCount: liveChildren(state).length, childLimit: childLimitOf(state) }
  }

  /** A child asked for blocks we lack: fetch them through our cache (from our parents), then serve them. */
  const relay = (rootHex: string, peerId: string, indexes: number[], priority: 0 | 1, signal: AbortSignal): Promise<void> | undefined => {
    const state = byRoot.get(rootHex)
    const store = state?.store as (ServedStore & Partial<Pick<BlockCache, 'ensure'>>) | undefined
    if (state === undefined || store === undefined || typeof store.ensure !== 'function' || !state.children.has(peerId)) return undefined
    const ensure = store.ensure.bind(store)
    return (async () => {
      const bounded = AbortSignal.any([signal, AbortSignal.timeout(RELAY_TIMEOUT_MS)])
      await ensure(indexes, { signal: bounded, priority: priority === 0 ? 'demand' : 'prefetch' })
      // Served only once durable (has()): the cache marks blocks present after its group commit.
      await waitFor(() => indexes.every(index => store.has(index)), bounded)
    })()
  }

  // ---- parents (child side) ----

  const leaveParent = async (state: ImageState, peerId: string): Promise<void> => {
    if (state.manifest === undefined || node === undefined) return
    try {
      await links.get(peerId)?.admit(state.manifest.root, true, AbortSignal.timeout(params.heartbeatMs))
    } catch {}
  }

  const candidatesOf = (state: ImageState): Candidate[] => {
    const out: Candidate[] = []
    for (const [peerId, entry] of state.candidates) {
      out.push({ advert: toTopologyAdvert(entry.advert, peerId), receivedAtMs: entry.receivedAtMs, rttMs: links.get(peerId)?.rttMs })
    }
    return out
  }

  const scheduleHeartbeat = (state: ImageState): void => {
    if (state.heartbeatRunning) { state.heartbeatAgain = true; return }
    void heartbeat(state)
  }

  const heartbeat = async (state: ImageState): Promise<void> => {
    if (node === undefined || stopped || state.heartbeatRunning) return
    state.heartbeatRunning = true
    try {
      do {
        state.heartbeatAgain = false
        await heartbeatOnce(state)
      } while (state.heartbeatAgain && !stopped)
    } catch (err) {
      logger.error('heartbeat failed', { image: state.imageId, error: (err as Error).message })
    } finally {
      state.heartbeatRunning = false
      notify()
    }
  }

  const heartbeatOnce = async (state: ImageState): Promise<void> => {
    const nowMs = clock.nowMs()
    const manifest = state.manifest
    // Forget adverts long gone (bounded memory); selection itself ignores those older than advertTimeoutMs.
    for (const [peer, entry] of state.candidates) if (nowMs - entry.receivedAtMs > 10 * params.advertTimeoutMs) state.candidates.delete(peer)
    for (const [peer, until] of state.profileExcluded) if (until <= nowMs) state.profileExcluded.delete(peer)
    if (manifest === undefined || state.store === undefined) return
    const signal = AbortSignal.any([stopController.signal, AbortSignal.timeout(Math.max(params.heartbeatMs, MIN_EXCHANGE_TIMEOUT_MS))])

    // 1. RTT probes: candidates without a measurement first, then the least recently probed (bounded).
    const probes = [...state.candidates.keys()]
      .filter(peer => !isBanned(peer) && !state.parents.some(p => p.peerId === peer))
      .sort((a, b) => Number(links.get(a)?.rttMs !== undefined) - Number(links.get(b)?.rttMs !== undefined) || random() - 0.5)
      .slice(0, MAX_PROBES_PER_HEARTBEAT)
    // Bounded: a probe that needs a new connection on a busy host finishes in the background and counts next time.
    const probeSignal = AbortSignal.any([signal, AbortSignal.timeout(Math.max(params.heartbeatMs / 2, 300))])
    await Promise.allSettled(probes.map(async peer => await linkTo(peer).ping(probeSignal)))

    // 2. Selection (src/topology/driver.ts: the same decisions as the simulator's).
    const plan = planHeartbeat({
      nowMs: clock.nowMs(),
      selfPeerId,
      selfIsSeed: isSeed(state),
      candidates: candidatesOf(state),
      parents: state.parents,
      depth: state.depth,
      refusedUntil: state.refused,
      isBanned,
      params,
      childCount: liveChildren(state).length,
      imageId: state.imageId,
      rootHex: manifest.rootHex
    })
    for (const peerId of plan.leave) void leaveParent(state, peerId)

    // 3. Admission of new parents, lease renewal of kept ones (both also measure RTT).
    const replies = new Map<string, AdmissionReply>()
    await Promise.all(plan.ask.map(async ({ peerId, kept }) => {
      try {
        const reply = await linkTo(peerId).admit(manifest.root, false, signal)
        replies.set(peerId, reply.accepted ? 'accepted' : 'refused')
      } catch (err) {
        if (stopController.signal.aborted) return
        if (!kept) logger.warn('admission failed', { image: state.imageId, peer: peerId, error: (err as Error).message })
        replies.set(peerId, 'error')
      }
    }))
    if (stopController.signal.aborted) return
    const settled = settleHeartbeat(plan, {
      nowMs: clock.nowMs(),
      selfIsSeed: isSeed(state),
      parents: state.parents,
      replies,
      depthOf: peerId => state.candidates.get(peerId)?.advert.depth ?? null,
      heartbeatMs: params.heartbeatMs
    })
    state.parents = settled.parents
    state.refused = settled.refusedUntil
    state.depth = settled.depth
    if (settled.changed) {
      logger.info('parents changed', {
        image: state.imageId, parents: state.parents.map(p => p.peerId), depth: state.depth, dropped: plan.selection.dropped, refused: settled.refused
      })
    }
    // A failed parent is replaced now, not a heartbeat later.
    if (settled.again) state.heartbeatAgain = true

    // 4. Advert; and a newer profile a peer advertised, if an earlier fetch did not get it.
    publish(state)
    maybeFetchProfile(state)
  }

  // ---- the peer source's view ----

  const directory: PeerDirectory = {
    sources (manifest) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined) return []
      const parentIds = new Set(state.parents.filter(p => !p.failed).map(p => p.peerId))
      const out: SourceInfo[] = []
      const connected = node === undefined ? new Set<string>() : new Set(node.getPeers().map(p => p.toString()))
      for (const [peerId, entry] of state.candidates) {
        if (entry.advert.rootHex !== manifest.rootHex || !connected.has(peerId)) continue
        const advert = entry.advert
        out.push({
          peerId,
          isParent: parentIds.has(peerId),
          holdProbability: index => holdProbability(advert, index),
          full: advert.childCount >= advert.childLimit || (advert.depth === 0 && !parentIds.has(peerId))
        })
      }
      return out
    },
    attaching (manifest) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined || isSeed(state) || state.parents.some(p => !p.failed)) return false
      return clock.nowMs() - state.addedAtMs < Math.max(ATTACH_GRACE_HEARTBEATS * params.heartbeatMs, MIN_ATTACH_GRACE_MS)
    },
    link: linkTo,
    isBanned,
    reportFailed (manifest, peerId, err) {
      const state = byRoot.get(manifest.rootHex)
      const parent = state?.parents.find(p => p.peerId === peerId)
      logger.warn('block request failed', { image: manifest.imageId, peer: peerId, error: err.message })
      if (state !== undefined && parent !== undefined && !parent.failed && err.name !== 'PeerBusyError') {
        parent.failed = true
        scheduleHeartbeat(state)
      }
    },
    reportCorrupt (_manifest, peerId) {
      ban(peerId, 'served a corrupt block')
    },
    onReceived (manifest, peerId, bytes) {
      const state = byRoot.get(manifest.rootHex)
      if (state === undefined) return
      state.bytesReceived += bytes
      state.bytesReceivedByPeer.set(peerId, (state.bytesReceivedByPeer.get(peerId) ?? 0) + bytes)
    },
    async waitForSources (signal) {
      let woken = false
      await waitFor(() => { const was = woken; woken = true; return was }, signal)
    }
  }

  const peerSource = new PeerSource({
    directory,
    downloadBucket,
    scheduler: init.scheduler,
    maxRequestBytes: init.maxRequestBytes,
    clock
  })

  const ban = (peerId: string, reason: string): void => {
    if (peerId === selfPeerId || peerId === 'file') return
    logger.warn('peer banned', { peer: peerId, reason, forMs: banMs })
    bans.set(peerId, clock.nowMs() + banMs)
    for (const state of images.values()) {
      const before = state.parents.length
      state.parents = state.parents.filter(p => p.peerId !== peerId)
      state.children.delete(peerId)
      state.candidates.delete(peerId)
      if (state.parents.length !== before) scheduleHeartbeat(state)
    }
    links.get(peerId)?.close()
    links.delete(peerId)
    if (node !== undefined) void node.hangUp(peerIdFromString(peerId)).catch(() => {})
    notify()
  }

  // ---- manifest fetch ----

  const fetchManifest = async (imageId: string, options: { signal: AbortSignal }): Promise<Manifest> => {
    const existing = images.get(imageId)
    if (existing?.manifest !== undefined) return existing.manifest
    const state = ensureState(imageId)
    const signal = AbortSignal.any([options.signal, stopController.signal])
    const tried = new Set<string>()
    let lastError: Error | undefined
    try {
      while (tried.size < MAX_MANIFEST_PEERS_TRIED) {
        if (state.manifest !== undefined) return state.manifest
        const peers = [...state.candidates.entries()]
          .filter(([peer, entry]) => entry.advert.manifestAvailable && !tried.has(peer) && !isBanned(peer))
          .sort(([, a], [, b]) => (a.advert.depth ?? 255) - (b.advert.depth ?? 255))
        if (peers.length === 0) {
          await directory.waitForSources(signal)
          continue
        }
        const [peer] = peers[0]
        tried.add(peer)
        try {
          const manifest = await fetchManifestFrom(requireNode(), peerIdFromString(peer), imageId, trustedKeys,
            AbortSignal.any([signal, AbortSignal.timeout(MANIFEST_FETCH_TIMEOUT_MS)]))
          if (manifest.rootHex !== state.candidates.get(peer)?.advert.rootHex) logger.warn('manifest root differs from the advert', { image: imageId, peer })
          return manifest
        } catch (err) {
          if (signal.aborted) throw err
          lastError = err as Error
          logger.warn('manifest fetch failed', { image: imageId, peer, error: lastError.message })
        }
      }
      throw new ManifestUnavailableError(`no peer gave a valid manifest for ${imageId}${lastError !== undefined ? `: ${lastError.message}` : ''}`)
    } finally {
      // Interest only: stop listening unless the image was added meanwhile.
      if (state.interestOnly && images.get(imageId) === state && state.store === undefined) {
        unsubscribe(state)
        images.delete(imageId)
      }
    }
  }

  // ---- lifecycle ----

  const start = async (): Promise<void> => {
    if (started) return
    started = true
    const psk = init.psk ?? (init.pskFile !== undefined ? await readPskFile(init.pskFile) : undefined)
    node = await createNode({
      identity: init.identity,
      listen: init.listen,
      psk,
      encryption: init.encryption,
      maxConnections: init.maxConnections,
      ipColocationPenalty: init.ipColocationPenalty,
      appSpecificScore: peerId => isBanned(peerId) ? -1000 : 0,
      isDenied: isBanned,
      yamuxMaxMessageBytes: init.yamuxMaxMessageBytes
    })
    const serverInit = {
      resolve: (rootHex: string) => byRoot.get(rootHex)?.store,
      admit,
      uploadBucket,
      isBanned,
      logger,
      relay,
      frameBudgetBytes: init.frameBudgetBytes,
      onSent: (rootHex: string, _peer: string, bytes: number) => {
        uploadMeter.add(bytes)
        const state = byRoot.get(rootHex)
        if (state !== undefined) state.bytesSent += bytes
      }
    }
    await node.handle(BLOCKS_PROTOCOL, (stream, connection) => {
      void serveBlockStream(serverInit, stream, connection, stopController.signal)
    }, { maxInboundStreams: 8, maxOutboundStreams: 8 })
    const profileServer = createProfileServer({
      lookup: imageId => images.get(imageId)?.store !== undefined ? init.profiles?.local(imageId)?.bytes : undefined,
      logger,
      nowMs: () => clock.nowMs()
    })
    await node.handle(PROFILE_PROTOCOL, (stream, connection) => {
      void profileServer.handle(stream, connection)
    }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
    await node.handle(MANIFEST_PROTOCOL, (stream, connection) => {
      void serveManifestStream(stream, connection, imageId => images.get(imageId)?.store !== undefined ? images.get(imageId)?.manifest : undefined, logger)
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    node.addEventListener('peer:disconnect', event => {
      const peerId = event.detail.toString()
      links.get(peerId)?.close()
      links.delete(peerId)
      for (const state of images.values()) {
        const parent = state.parents.find(p => p.peerId === peerId)
        if (parent !== undefined) { parent.failed = true; scheduleHeartbeat(state) }
        // A child that is gone frees its slot now, not when its lease runs out: with the origin's single slot,
        // the orphans need it within the heartbeat.
        if (state.children.delete(peerId)) publishSoon(state)
      }
      notify()
    })
    node.addEventListener('peer:connect', () => { notify() })
    // A peer subscribed to one of our image topics: tell it about us now, not at the next heartbeat.
    node.services.pubsub.addEventListener('subscription-change', event => {
      for (const sub of event.detail.subscriptions) {
        const state = sub.subscribe ? images.get(imageIdFromTopic(sub.topic) ?? '') : undefined
        if (state !== undefined) publishSoon(state)
      }
    })
    for (const state of images.values()) subscribe(state)
    bootstrapper = new Bootstrapper(node, init.bootstrap ?? [], logger)
    bootstrapper.start()
    heartbeatTimer = setInterval(() => {
      for (const state of images.values()) void heartbeat(state)
    }, params.heartbeatMs)
    heartbeatTimer.unref()
    for (const state of images.values()) { publishSoon(state); scheduleHeartbeat(state) }
    logger.info('p2p node started', { peerId: selfPeerId, addrs: node.getMultiaddrs().map(a => a.toString()), encryption: init.encryption ?? 'noise', psk: psk !== undefined })
  }

  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    if (heartbeatTimer !== undefined) clearInterval(heartbeatTimer)
    bootstrapper?.stop()
    for (const state of images.values()) {
      if (state.publishTimer !== undefined) clearTimeout(state.publishTimer)
      state.unsubscribeBlocks?.()
    }
    stopController.abort(new ServiceStoppedError('p2p service stopped'))
    peerSource.stop()
    for (const link of links.values()) link.close()
    links.clear()
    notify()
    await node?.stop()
  }

  const status = (): P2PStatus => {
    const out: P2PStatus = {
      peerId: selfPeerId,
      publicKeyHex: init.identity.publicKeyHex,
      listenAddrs: node?.getMultiaddrs().map(a => a.toString()) ?? [],
      peers: node?.getPeers().map(p => p.toString()) ?? [],
      banned: [...bans.keys()].filter(isBanned),
      images: {}
    }
    for (const state of images.values()) {
      if (state.manifest === undefined || state.store === undefined) continue
      out.images[state.imageId] = {
        imageId: state.imageId,
        rootHex: state.manifest.rootHex,
        heldFraction: heldBlocks(state) / state.manifest.blockCount,
        depth: isSeed(state) ? 0 : state.depth,
        parents: state.parents.filter(p => !p.failed).map(p => p.peerId),
        children: liveChildren(state),
        bytesSent: state.bytesSent,
        bytesReceived: state.bytesReceived,
        bytesReceivedByPeer: Object.fromEntries(state.bytesReceivedByPeer),
        candidates: state.candidates.size,
        profileVersion: init.profiles?.local(state.imageId)?.version ?? null,
        profilesFetched: state.profilesFetched
      }
    }
    return out
  }

  return {
    start,
    stop,
    blockSource: peerSource,
    peerSource,
    addImage,
    removeImage,
    fetchManifest,
    status,
    peerId: selfPeerId,
    multiaddrs: () => requireNode().getMultiaddrs().map(a => a.toString()),
    node: requireNode,
    ban,
    waitFor,
    profileChanged
  }
}
