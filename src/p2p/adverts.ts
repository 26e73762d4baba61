// Gossip adverts of the images this agent serves: building and publishing ours (rate limited), validating
// and recording the peers' (gossipsub topic validator), and the topic subscriptions.
//
// Every received advert copy costs a signature verification in gossipsub's receive path, on every agent of
// the topic: publishing is the swarm's main fixed CPU cost, so the publish policy lives here in one place.

import type { PeerId } from '@libp2p/interface'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { encodeAdvert, summarize, validateAdvert, type AdvertBody } from './advert.js'
import { imageTopicScoreParams } from './node.js'
import { MAX_PROFILE_WIRE_BYTES, type ProfileProvider } from './profile-protocol.js'
import { heldBlocks, isSeed, type ImageState, type ServiceComponents } from './components.js'

/** Adverts are published at most this often on change (plus every heartbeat). */
export const DEFAULT_MIN_ADVERT_INTERVAL_MS = 250

export interface AdvertsInit {
  profiles?: ProfileProvider
  /** Our upload load, 0..1. */
  uploadLoad: () => number
  liveChildren: (state: ImageState) => string[]
  childLimitOf: (state: ImageState) => number
  /** A candidate became eligible while we lack parents: select now. */
  scheduleHeartbeat: (state: ImageState) => void
  /** A peer advertised a profile: maybe fetch it. */
  maybeFetchProfile: (state: ImageState) => void
}

export interface Adverts {
  /** Publishes now (heartbeat). */
  publish: (state: ImageState) => void
  /** Publishes soon: at once if the last advert is old enough, else once the rate limit allows. */
  publishSoon: (state: ImageState) => void
  subscribe: (state: ImageState) => void
  unsubscribe: (state: ImageState) => void
  /** Cancels a pending publish (image removed, service stopping). */
  cancel: (state: ImageState) => void
}

/** Gossipsub's live topic score params (the GossipSub interface does not expose the score). */
function scoreTopics (pubsub: unknown): Record<string, unknown> {
  return (pubsub as { score: { params: { topics: Record<string, unknown> } } }).score.params.topics
}

export const createAdverts = (init: AdvertsInit) => (components: ServiceComponents): Adverts => {
  const { logger, clock, params, images, peers, events, selfPeerId } = components

  /** Our listen addresses for adverts, without the /p2p suffix; loopback last. */
  const advertAddrs = (): Uint8Array[] => {
    const node = components.node()
    if (node === undefined) return []
    const addrs = node.getMultiaddrs().map(a => a.decapsulateCode(421))
    addrs.sort((a, b) => Number(a.toString().includes('/127.0.0.1/')) - Number(b.toString().includes('/127.0.0.1/')))
    const seen = new Set<string>()
    return addrs.filter(a => { const k = a.toString(); if (seen.has(k)) return false; seen.add(k); return true }).map(a => a.bytes)
  }

  const advertisedProfile = (imageId: string): { profile?: AdvertBody['profile'] } => {
    const local = init.profiles?.local(imageId)
    if (local === undefined || local.bytes.byteLength === 0 || local.bytes.byteLength > MAX_PROFILE_WIRE_BYTES) return {}
    return { profile: { version: local.version, boots: Math.min(255, Math.max(1, local.boots)), sizeBytes: local.bytes.byteLength } }
  }

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
      childCount: Math.min(init.liveChildren(state).length, init.childLimitOf(state)),
      childLimit: init.childLimitOf(state),
      uploadLoad: init.uploadLoad(),
      manifestAvailable: true,
      summary: summarize(state.store.presentBitmap(), total),
      addrs: advertAddrs(),
      ...advertisedProfile(state.imageId)
    }
  }

  const cancel = (state: ImageState): void => {
    if (state.publishTimer !== undefined) { clearTimeout(state.publishTimer); state.publishTimer = undefined }
  }

  const publish = (state: ImageState): void => {
    const node = components.node()
    if (node === undefined || components.stopped()) return
    cancel(state)
    const advert = buildAdvert(state)
    if (advert === undefined) return
    state.lastPublishMs = clock.nowMs()
    node.services.pubsub.publish(state.topic, encodeAdvert(advert)).catch((err: Error) => {
      logger.warn('advert publish failed', { image: state.imageId, error: err.message })
    })
  }

  const publishSoon = (state: ImageState): void => {
    if (state.publishTimer !== undefined || components.node() === undefined) return
    const wait = state.lastPublishMs + DEFAULT_MIN_ADVERT_INTERVAL_MS - clock.nowMs()
    if (wait <= 0) { publish(state); return }
    state.publishTimer = setTimeout(() => { state.publishTimer = undefined; publish(state) }, wait)
    state.publishTimer.unref()
  }

  const validator = (state: ImageState) => (from: PeerId, message: { type: string, data: Uint8Array, from?: PeerId }): TopicValidatorResult => {
    if (images.get(state.imageId) !== state) return TopicValidatorResult.Ignore
    if (message.type !== 'signed' || message.from === undefined) return TopicValidatorResult.Reject
    const sender = message.from.toString()
    if (sender === selfPeerId) return TopicValidatorResult.Ignore
    if (peers.isBanned(sender)) return TopicValidatorResult.Reject
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
    const node = components.node()
    if (verdict.advert.addrs.length > 0 && node !== undefined && node.getConnections(message.from).length === 0) {
      // Learn how to dial the sender (we may only share a bootstrap peer with it).
      node.peerStore.merge(message.from, { multiaddrs: verdict.advert.addrs.map(addr => multiaddr(addr)) }).catch(() => {})
    }
    const previous = state.candidates.get(sender)
    state.candidates.set(sender, { advert: verdict.advert, receivedAtMs: clock.nowMs() })
    // A candidate that just became eligible (new, or attached: depth known) while we lack parents: select now
    // rather than at the next heartbeat.
    const newlyEligible = verdict.advert.depth !== null && (previous === undefined || previous.advert.depth === null)
    if (newlyEligible && state.parents.length < params.parentCount && state.store !== undefined && !isSeed(state)) init.scheduleHeartbeat(state)
    if (verdict.advert.profile !== undefined) init.maybeFetchProfile(state)
    events.notify()
    return TopicValidatorResult.Accept
  }

  const subscribe = (state: ImageState): void => {
    const pubsub = components.requireNode().services.pubsub
    scoreTopics(pubsub)[state.topic] = imageTopicScoreParams()
    pubsub.topicValidators.set(state.topic, validator(state) as any)
    pubsub.subscribe(state.topic)
  }

  const unsubscribe = (state: ImageState): void => {
    const node = components.node()
    if (node === undefined) return
    const pubsub = node.services.pubsub
    pubsub.unsubscribe(state.topic)
    pubsub.topicValidators.delete(state.topic)
    delete scoreTopics(pubsub)[state.topic]
  }

  return { publish, publishSoon, subscribe, unsubscribe, cancel }
}
