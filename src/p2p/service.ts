// The p2p service the daemon runs: one libp2p node, the block, manifest and profile protocols, gossip adverts
// per image, and the per-image heartbeat that keeps this agent's place in each image's tree. This file only
// wires the parts together (each is `createX(init)(components)` over the shared state in components.ts):
//   adverts.ts          our adverts (publish policy) and the peers' (topic validator)
//   heartbeat.ts        per image: probe, select parents, admission, publish
//   children.ts         the parent side: admission of children, leases
//   directory.ts        the peer source's view: who serves an image's blocks
//   peer-source.ts      the BlockSource: jobs striped, hedged and failed over across peers (the hot path, with
//   block-server.ts     the serving side, and relay.ts: a parent fetching for its children)
//   manifest-finder.ts  fetching an image's manifest from peers
//   profile-fetcher.ts  fetching newer boot profiles from peers
//   peer-exchange.ts    asking peers for the agents they are connected to (a fresh agent knows its bootstrap only)
// A peer that served a corrupt block (or a malformed frame, or flooded us with adverts) is banned for banMs:
// dropped as parent, disconnected, refused at the connection gater, and given a large negative gossipsub app
// score.

import '../polyfill.js'
import { setMaxListeners } from 'node:events'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Identity } from '../identity/key.js'
import type { Manifest } from '../blockstack/manifest.js'
import type { BlockSource } from '../blockstack/types.js'
import { silentLogger, type Logger } from '../blockstack/cache.js'
import { DEFAULT_TOPOLOGY_PARAMS, type TopologyParams } from '../topology/index.js'
import { createNode, Bootstrapper, runGossipsubOnBeat, type Encryption, type P2PNode } from './node.js'
import { readPskFile } from './psk.js'
import { imageIdFromTopic, imageTopic } from './advert.js'
import { serveBlockStream, serveDataChannel, DEFAULT_NON_CHILD_BURST_BYTES, DEFAULT_NON_CHILD_BYTES_PER_SEC, type BlockServerInit } from './block-server.js'
import { LastResortBudget } from './last-resort-budget.js'
import { DataChannelServer } from './data-channel.js'
import { PeerLink } from './peer-link.js'
import { PeerSource, type PeerSourceStats } from './peer-source.js'
import { fetchManifestFrom, serveManifestStream, MANIFEST_PROTOCOL, MANIFEST_PROTOCOL_V1 } from './manifest-protocol.js'
import { BLOCKS_PROTOCOL } from './wire.js'
import { PROFILE_PROTOCOL, createProfileServer, createLiveProfileFetcher, type LiveProfileFetcher, type ProfileProvider } from './profile-protocol.js'
import { RateMeter, TokenBucket } from './rate-limit.js'
import { systemClock, type Clock } from './clock.js'
import { ServiceStoppedError } from './errors.js'
import type { SchedulerParams } from '../topology/scheduler.js'
import { bootingPeersCached, dropLifetime, newImageState, heldBlocks, isFreshEntry, isSeed, type CandidateEntry, type ImageState, type PeerBook, type ServedStore, type ServiceComponents } from './components.js'
import { createServiceEvents } from './events.js'
import { createAdverts } from './adverts.js'
import { DEFAULT_ADVERT_POLICY, type AdvertPolicyParams } from './advert-policy.js'
import { createHeartbeat, originPeerIdOf } from './heartbeat.js'
import { createChildren } from './children.js'
import { createDirectory } from './directory.js'
import { createRelay } from './relay.js'
import { createManifestFinder, originPeerIds } from './manifest-finder.js'
import { CATALOG_TOPIC, createCatalog, DEFAULT_CATALOG_MANIFESTS, type CatalogPubsub, type CatalogStats } from './catalog.js'
import { createProfileFetcher } from './profile-fetcher.js'
import { createPeerExchange, PEER_EXCHANGE_PROTOCOL, type PeerExchange } from './peer-exchange.js'
import { createBeat, type Beat } from '../beat.js'

export type { ServedStore } from './components.js'
export { DEFAULT_MIN_ADVERT_INTERVAL_MS } from './adverts.js'

export const DEFAULT_BAN_MS = 10 * 60_000
/** Upload capacity assumed for the advertised load when no upload limit is set (1 Gb/s). */
export const DEFAULT_UPLOAD_CAPACITY_BYTES_PER_SEC = 125_000_000

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
  /**
   * The agent's beat (src/beat.ts), shared with the daemon's other once-a-second work: gossipsub's heartbeat and
   * score decay run on it, and the p2p heartbeat too when heartbeatMs is its period. Default: one of our own.
   */
  beat?: Beat
  banMs?: number
  logger?: Logger
  clock?: Clock
  random?: () => number
  ipColocationPenalty?: boolean
  maxConnections?: number
  /** Connections to dial up to from peers' lists (peer-exchange.ts; default 16, 0: no peer exchange). */
  peerExchangeTarget?: number
  /** Manifests of trusted origins' catalogs fetched ahead and held (catalog.ts; default 16, 0: none). */
  catalogManifests?: number
  /** Tuning (benchmarks). */
  yamuxMaxMessageBytes?: number
  frameBudgetBytes?: number
  maxRequestBytes?: number
  /** Boot profiles: advertised, served over /vmthunder/profile/1, and fetched from peers that advertise newer ones. */
  profiles?: ProfileProvider
  /** When adverts are published (advert-policy.ts); the keep-alive also sets how long a silent peer is kept. */
  advertPolicy?: Partial<AdvertPolicyParams>
  /**
   * Test-only (hostile-peer tests wrap it with a fault layer): the block server's BLOCKS frame encoder. The
   * daemon builds this init from named config fields (src/daemon/peers.ts), so no config file reaches it.
   */
  frameEncoder?: BlockServerInit['frameEncoder']
  /**
   * Data channels (data-channel.ts): blocks between agents on a direct, sealed TCP connection beside the libp2p
   * stream. `port` of the listener (0: any free one) on the host of the first TCP listen address; false: off,
   * blocks stay on the libp2p stream. Default { port: 0 }.
   */
  dataChannel?: { port: number } | false
}

/** The host of the first TCP listen address (/ip4/H/tcp/P or /ip6/H/tcp/P), where the data channel listens. */
export function dataChannelHost (listen: readonly string[]): string | undefined {
  for (const addr of listen) {
    const m = /^\/(ip4|ip6)\/([^/]+)\/tcp\/\d+/.exec(addr)
    if (m !== null) return m[2]
  }
  return undefined
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
  /** Adverts this agent published for the image since it was added. */
  advertsPublished?: number
}

export interface P2PStatus {
  peerId: string
  publicKeyHex: string
  listenAddrs: string[]
  peers: string[]
  banned: string[]
  /** The peer source's request counters (see PeerSourceStats). */
  blockRequests: PeerSourceStats
  /** Data channels: the listener's port (null: none), links to peers on one, connections served. */
  dataChannels: { port: number | null, outbound: number, inbound: number }
  /**
   * Manifests found for a create: from peers that advertised the image, from connected peers asked before any
   * advert, or fetched ahead from an origin's catalog.
   */
  manifestsFound: { advertised: number, direct: number, catalog: number }
  /** The image catalog (catalog.ts): origins' catalogs received, manifests fetched ahead, failed, held, used. */
  catalog: CatalogStats
  /** Peer exchange: lists asked for and served, peers dialled from them and connected, failures. */
  peerExchange: { asked: number, served: number, dialled: number, connectedByExchange: number, failed: number }
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
  /** The agent's profile of an image (or how many VMs of it it boots) changed: advertise it now. */
  profileChanged: (imageId: string) => void
  /** Peers whose fresh advert says they are booting the image now (idle prefetch of it waits for them). */
  peersBooting: (imageId: string) => number
}


export function createP2PService (init: P2PServiceInit): P2PService {
  const logger = init.logger ?? silentLogger
  const clock = init.clock ?? systemClock
  // Our own beat only when none is given: then started and stopped with the service.
  const ownBeat = init.beat === undefined ? createBeat({ onError: err => { logger.warn('beat task failed', { error: err }) } }) : undefined
  const beat: Beat = init.beat ?? ownBeat!
  let leaveGossipBeat: (() => void) | undefined
  const params: TopologyParams = {
    ...DEFAULT_TOPOLOGY_PARAMS,
    ...init.topologyParams,
    ...(init.childLimit !== undefined ? { childLimit: init.childLimit } : {}),
    ...(init.heartbeatMs !== undefined ? { heartbeatMs: init.heartbeatMs } : {})
  }
  if (params.advertTimeoutMs < params.heartbeatMs) params.advertTimeoutMs = 3 * params.heartbeatMs
  // Adverts without news come only every keep-alive (advert-policy.ts): a peer is forgotten after three missed.
  const advertPolicy = { ...DEFAULT_ADVERT_POLICY, ...init.advertPolicy }
  params.advertTimeoutMs = Math.max(params.advertTimeoutMs, 3 * Math.max(advertPolicy.keepAliveMs, params.heartbeatMs))
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
  const events = createServiceEvents()
  const stopController = new AbortController()
  // Every stream, heartbeat and relay listens on it: one listener each, released when they end.
  setMaxListeners(Infinity, stopController.signal)
  let node: P2PNode | undefined
  let dataChannels: DataChannelServer | undefined
  let bootstrapper: Bootstrapper | undefined
  let peerExchange: PeerExchange | undefined
  let started = false
  let stopped = false
  /** Numbers each (re)connection of a peer: components.connectionEpochs. */
  let connectionCount = 0

  const requireNode = (): P2PNode => {
    if (node === undefined) throw new ServiceStoppedError('p2p service is not started')
    return node
  }

  const isBanned = (peerId: string): boolean => {
    const until = bans.get(peerId)
    if (until === undefined) return false
    if (clock.nowMs() >= until) { bans.delete(peerId); return false }
    return true
  }

  const peers: PeerBook = {
    link: (peerId: string): PeerLink => {
      let link = links.get(peerId)
      if (link === undefined || link.closed) {
        link = new PeerLink(requireNode(), peerIdFromString(peerId), logger, clock, { dataChannel: dataChannels !== undefined })
        links.set(peerId, link)
      }
      return link
    },
    existingLink: peerId => links.get(peerId),
    closeLink: peerId => { links.get(peerId)?.close(); links.delete(peerId) },
    isBanned,
    banned: () => [...bans.keys()].filter(isBanned)
  }

  const components: ServiceComponents = {
    selfPeerId,
    logger,
    clock,
    random: init.random ?? Math.random,
    params,
    images,
    byRoot,
    peers,
    connected: new Set(),
    connectionEpochs: new Map(),
    events,
    stopSignal: stopController.signal,
    node: () => node,
    requireNode,
    stopped: () => stopped
  }

  // The parts; the arrow functions reach parts built later (no call happens before all exist).
  const children = createChildren({ publishSoon: state => { adverts.publishSoon(state) } })(components)
  const profileFetcher = createProfileFetcher({ profiles: init.profiles })(components)
  let liveProfiles: LiveProfileFetcher | undefined
  /** A connected, unbanned peer whose fresh advert says it boots the image now. */
  const isBootingPeer = (peer: string, entry: CandidateEntry, nowMs: number): boolean =>
    (entry.advert.booting ?? 0) > 0 && isFreshEntry(entry, nowMs, params) && components.connected.has(peer) && !isBanned(peer)
  const bootingPeersOf = (state: ImageState): string[] => {
    const nowMs = clock.nowMs()
    const peers: string[] = []
    for (const [peer, entry] of state.candidates) if (isBootingPeer(peer, entry, nowMs)) peers.push(peer)
    return peers
  }
  // Counted without a list, and afresh only when an advert, a connection or a ban came in, or 100 ms passed
  // (bootingPeersCached, components.ts): the count agrees at once with what the adverts say (a status that showed
  // a live profile fetched from a booting peer beside a stale count of 0 failed a test).
  const countBootingPeers = (state: ImageState): number => {
    const nowMs = clock.nowMs()
    return bootingPeersCached(state, nowMs, events.sourcesEpoch(), () => {
      let n = 0
      for (const [peer, entry] of state.candidates) if (isBootingPeer(peer, entry, nowMs)) n++
      return n
    })
  }
  // A newer learned profile, and the live read order of peers booting the image now (swarm read-ahead).
  const maybeFetchProfiles = (state: ImageState): void => {
    profileFetcher.maybeFetch(state)
    if (state.store !== undefined) liveProfiles?.maybeFetch(state.imageId, bootingPeersOf(state))
  }
  const adverts = createAdverts({
    profiles: init.profiles,
    uploadLoad: () => Math.min(1, uploadMeter.bytesPerSec() / uploadCapacity),
    liveChildren: children.live,
    childLimitOf: children.limitOf,
    soleFullOf: children.soleFull,
    scheduleHeartbeat: state => { heartbeat.schedule(state) },
    maybeFetchProfile: maybeFetchProfiles,
    policy: advertPolicy,
    ban: (peerId, reason) => { ban(peerId, reason) }
  })(components)
  const heartbeat = createHeartbeat({
    liveChildren: children.live,
    publish: adverts.publish,
    maybeFetchProfile: maybeFetchProfiles,
    beat
  })(components)
  const relay = createRelay()(components)

  const ban = (peerId: string, reason: string): void => {
    if (peerId === selfPeerId || peerId === 'file') return
    logger.warn('peer banned', { peer: peerId, reason, forMs: banMs })
    bans.set(peerId, clock.nowMs() + banMs)
    for (const state of images.values()) {
      const before = state.parents.length
      state.parents = state.parents.filter(p => p.peerId !== peerId)
      state.children.delete(peerId)
      state.childParentCounts.delete(peerId)
      state.candidates.delete(peerId)
      if (state.parents.length !== before) heartbeat.schedule(state)
    }
    peers.closeLink(peerId)
    if (node !== undefined) void node.hangUp(peerIdFromString(peerId)).catch(() => {})
    events.notify()
    events.sourcesChanged()
  }

  const directory = createDirectory({ scheduleHeartbeat: heartbeat.schedule, ban })(components)
  const peerSource = new PeerSource({
    directory,
    downloadBucket,
    scheduler: init.scheduler,
    maxRequestBytes: init.maxRequestBytes,
    clock,
    logger
  })

  // ---- images ----

  const ensureState = (imageId: string): ImageState => {
    let state = images.get(imageId)
    if (state === undefined) {
      state = newImageState(imageId, imageTopic(imageId), clock.nowMs())
      images.set(imageId, state)
      if (node !== undefined) adverts.subscribe(state)
    }
    return state
  }

  const isOwn = (manifest: Manifest): boolean => originPeerIdOf(manifest) === selfPeerId
  // The trusted origins other than this agent: the catalogs acted on, the peers asked first for a manifest.
  const origins = originPeerIds(trustedKeys)
  origins.delete(selfPeerId)
  const catalog = createCatalog({
    pubsub: () => requireNode().services.pubsub as unknown as CatalogPubsub,
    origins,
    maxManifests: init.catalogManifests ?? DEFAULT_CATALOG_MANIFESTS,
    ownImages: () => [...images.values()].flatMap(state => state.store !== undefined && state.manifest !== undefined && isOwn(state.manifest) ? [{ id: state.imageId, root: state.manifest.rootHex }] : []),
    has: (imageId, rootHex) => { const state = images.get(imageId); return state?.store !== undefined && state.manifest?.rootHex === rootHex },
    fetch: async (peer, imageId, signal) => await fetchManifestFrom(requireNode(), peerIdFromString(peer), imageId, trustedKeys, signal),
    clock,
    signal: stopController.signal,
    logger
  })

  const manifestsFound = { advertised: 0, direct: 0, catalog: 0 }
  const fetchManifest = createManifestFinder({
    trustedKeys,
    origins,
    ensureState,
    dropInterest: state => { adverts.unsubscribe(state); images.delete(state.imageId) },
    ahead: catalog.take,
    onFound: how => { manifestsFound[how]++ }
  })(components)

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
    state.attachedOnce = false
    byRoot.set(manifest.rootHex, state)
    for (const [peer, entry] of state.candidates) {
      if (entry.advert.rootHex !== manifest.rootHex || entry.advert.totalBlocks !== manifest.blockCount) state.candidates.delete(peer)
    }
    state.unsubscribeBlocks?.()
    state.unsubscribeBlocks = store.onBlocksAdded?.(() => {
      adverts.publishOnBlocks(state)
      events.notify()
    })
    if (isSeed(state)) state.depth = 0
    if (node !== undefined) {
      adverts.publishSoon(state)
      heartbeat.schedule(state)
      if (isOwn(manifest)) catalog.publishSoon()
    }
    events.notify()
    events.sourcesChanged(manifest.rootHex)
  }

  const removeImage = (imageId: string): void => {
    const state = images.get(imageId)
    if (state === undefined) return
    state.unsubscribeBlocks?.()
    adverts.cancel(state)
    if (state.manifest !== undefined) {
      byRoot.delete(state.manifest.rootHex)
      for (const parent of state.parents) void heartbeat.leaveParent(state, parent.peerId)
    }
    adverts.unsubscribe(state)
    images.delete(imageId)
    if (node !== undefined && state.manifest !== undefined && isOwn(state.manifest)) catalog.publishSoon()
    events.notify()
  }

  const profileChanged = (imageId: string): void => {
    const state = images.get(imageId)
    if (state?.store !== undefined) adverts.publishSoon(state)
    events.notify()
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
    const baseServerInit = {
      resolve: (rootHex: string) => byRoot.get(rootHex)?.store,
      admit: children.admit,
      nonChildBudget: new LastResortBudget(DEFAULT_NON_CHILD_BURST_BYTES, DEFAULT_NON_CHILD_BYTES_PER_SEC, clock),
      chargesNonChildBudget: (rootHex: string, peerId: string) => {
        const state = byRoot.get(rootHex)
        return state?.manifest !== undefined && isOwn(state.manifest) && !state.children.has(peerId)
      },
      onRequest: (rootHex: string, peerId: string) => { children.touch(peerId, rootHex) },
      uploadBucket,
      isBanned,
      logger,
      relay,
      frameBudgetBytes: init.frameBudgetBytes,
      frameEncoder: init.frameEncoder,
      onSent: (rootHex: string, _peer: string, bytes: number) => {
        uploadMeter.add(bytes)
        const state = byRoot.get(rootHex)
        if (state !== undefined) state.bytesSent += bytes
      }
    }
    const channel = init.dataChannel ?? { port: 0 }
    const channelHost = channel === false ? undefined : dataChannelHost(init.listen)
    if (channel !== false && channelHost !== undefined) {
      const server: DataChannelServer = new DataChannelServer({
        host: channelHost,
        port: channel.port,
        logger,
        nowMs: () => clock.nowMs(),
        serve: (peerId, socket, keys) => {
          if (isBanned(peerId)) { socket.destroy(); return }
          serveDataChannel(serverInit, peerId, socket, keys, stopController.signal)
        }
      })
      await server.start()
      dataChannels = server
    }
    const serverInit: BlockServerInit = { ...baseServerInit, dataChannels }
    await node.handle(BLOCKS_PROTOCOL, (stream, connection) => {
      void serveBlockStream(serverInit, stream, connection, stopController.signal)
    }, { maxInboundStreams: 8, maxOutboundStreams: 8 })
    const profileServer = createProfileServer({
      lookup: (imageId, live) => images.get(imageId)?.store === undefined ? undefined : live ? init.profiles?.live?.(imageId) : init.profiles?.local(imageId)?.bytes,
      logger,
      nowMs: () => clock.nowMs()
    })
    await node.handle(PROFILE_PROTOCOL, (stream, connection) => {
      void profileServer.handle(stream, connection)
    }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
    if (init.peerExchangeTarget !== 0) {
      const pex = createPeerExchange({
        node: () => node,
        selfPeerId,
        isBanned,
        agentProtocol: BLOCKS_PROTOCOL,
        logger,
        clock,
        random: components.random,
        signal: stopController.signal,
        targetConnections: init.peerExchangeTarget
      })
      await node.handle(PEER_EXCHANGE_PROTOCOL, (stream, connection) => {
        void pex.handle(stream, connection)
      }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
      peerExchange = pex
    }
    if (init.profiles !== undefined) liveProfiles = createLiveProfileFetcher({ node: requireNode, provider: init.profiles, logger, signal: stopController.signal, nowMs: () => clock.nowMs() })
    const manifestOf = (imageId: string): Manifest | undefined => images.get(imageId)?.store !== undefined ? images.get(imageId)?.manifest : undefined
    await node.handle(MANIFEST_PROTOCOL, (stream, connection) => {
      void serveManifestStream(stream, connection, manifestOf, logger, { deflate: true })
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    await node.handle(MANIFEST_PROTOCOL_V1, (stream, connection) => {
      void serveManifestStream(stream, connection, manifestOf, logger, { deflate: false })
    }, { maxInboundStreams: 4, maxOutboundStreams: 4 })
    node.addEventListener('peer:disconnect', event => {
      const peerId = event.detail.toString()
      components.connected.delete(peerId)
      components.connectionEpochs.delete(peerId)
      peers.closeLink(peerId)
      for (const state of images.values()) {
        const parent = state.parents.find(p => p.peerId === peerId)
        if (parent !== undefined) { parent.failed = true; heartbeat.schedule(state) }
        const candidate = state.candidates.get(peerId)
        if (candidate !== undefined) dropLifetime(candidate)
      }
      children.forget(peerId)
      events.notify()
      events.sourcesChanged()
    })
    node.addEventListener('peer:connect', event => {
      components.connected.add(event.detail.toString())
      components.connectionEpochs.set(event.detail.toString(), ++connectionCount)
      events.notify()
      events.sourcesChanged()
      void peerExchange?.connected(event.detail.toString())
    })
    for (const peer of node.getPeers()) {
      components.connected.add(peer.toString())
      components.connectionEpochs.set(peer.toString(), ++connectionCount)
    }
    // A peer subscribed to one of our image topics: tell it about us now, not at the next heartbeat.
    const imageOfTopic = (topic: string): ImageState | undefined => images.get(imageIdFromTopic(topic) ?? '')
    node.services.pubsub.addEventListener('subscription-change', event => {
      for (const sub of event.detail.subscriptions) {
        if (sub.subscribe && sub.topic === CATALOG_TOPIC) catalog.publishSoon()
        const state = sub.subscribe ? imageOfTopic(sub.topic) : undefined
        if (state !== undefined) adverts.publishForced(state)
      }
    })
    // ... and again when it joins our mesh of the topic. A peer's subscription often arrives on its new stream
    // before gossipsub has opened ours to it: the advert above then reaches everyone but the new subscriber
    // ("no open stream"), which waited for the next keep-alive (instance.create on a fresh client took 5.4 s
    // instead of 0.1 s). Its GRAFT comes once it has our subscriptions, i.e. once our stream is open. The
    // advert policy bounds these (one per minIntervalMs).
    node.services.pubsub.addEventListener('gossipsub:graft', event => {
      if (event.detail.direction === 'inbound' && event.detail.topic === CATALOG_TOPIC) catalog.publishSoon()
      const state = event.detail.direction === 'inbound' ? imageOfTopic(event.detail.topic) : undefined
      if (state !== undefined) adverts.publishForced(state)
    })
    ownBeat?.start()
    leaveGossipBeat = runGossipsubOnBeat(node.services.pubsub, beat, err => { logger.warn('gossipsub heartbeat failed', { error: err }) })
    if (leaveGossipBeat === undefined) logger.warn('gossipsub keeps its own heartbeat timers (not as expected: another version?)', {})
    for (const state of images.values()) adverts.subscribe(state)
    catalog.start()
    catalog.publishSoon()
    bootstrapper = new Bootstrapper(node, init.bootstrap ?? [], logger)
    bootstrapper.start()
    peerExchange?.start()
    for (const state of images.values()) adverts.publishForced(state)
    heartbeat.start()
    logger.info('p2p node started', { peerId: selfPeerId, addrs: node.getMultiaddrs().map(a => a.toString()), encryption: init.encryption ?? 'noise', psk: psk !== undefined })
  }

  const stop = async (): Promise<void> => {
    if (stopped) return
    stopped = true
    heartbeat.stop()
    if (node !== undefined) catalog.stop()
    leaveGossipBeat?.()
    ownBeat?.stop()
    bootstrapper?.stop()
    peerExchange?.stop()
    for (const state of images.values()) {
      adverts.cancel(state)
      state.unsubscribeBlocks?.()
    }
    stopController.abort(new ServiceStoppedError('p2p service stopped'))
    peerSource.stop()
    for (const link of links.values()) link.close()
    links.clear()
    events.notify()
    events.sourcesChanged()
    await dataChannels?.stop()
    await node?.stop()
  }

  const status = (): P2PStatus => {
    const out: P2PStatus = {
      peerId: selfPeerId,
      publicKeyHex: init.identity.publicKeyHex,
      listenAddrs: node?.getMultiaddrs().map(a => a.toString()) ?? [],
      peers: node?.getPeers().map(p => p.toString()) ?? [],
      banned: peers.banned(),
      blockRequests: { ...peerSource.stats },
      dataChannels: { port: dataChannels?.port ?? null, outbound: [...links.values()].filter(l => l.onDataChannel).length, inbound: dataChannels?.connections ?? 0 },
      manifestsFound: { ...manifestsFound },
      catalog: catalog.stats(),
      peerExchange: peerExchange?.stats() ?? { asked: 0, served: 0, dialled: 0, connectedByExchange: 0, failed: 0 },
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
        children: children.live(state),
        bytesSent: state.bytesSent,
        bytesReceived: state.bytesReceived,
        bytesReceivedByPeer: Object.fromEntries(state.bytesReceivedByPeer),
        candidates: state.candidates.size,
        profileVersion: init.profiles?.local(state.imageId)?.version ?? null,
        profilesFetched: state.profilesFetched,
        advertsPublished: state.advertsPublished
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
    waitFor: events.waitFor,
    profileChanged,
    peersBooting: imageId => { const state = images.get(imageId); return state === undefined ? 0 : countBootingPeers(state) }
  }
}
