// Gossip adverts of the images this agent serves: building and publishing ours (when advert-policy.ts says
// one is due), validating and recording the peers' (gossipsub topic validator), and the topic subscriptions.

import type { PeerId } from '@libp2p/interface'
import { TopicValidatorResult } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { encodeAdvert, summarize, validateAdvert, type AdvertBody } from './advert.js'
import { imageTopicScoreParams } from './node.js'
import { MAX_PROFILE_WIRE_BYTES, type ProfileProvider } from './profile-protocol.js'
import { heldBlocks, isSeed, type ImageState, type ServiceComponents } from './components.js'
import {
  ADVERT_LIFETIME_KEEPALIVES, DEFAULT_ADVERT_POLICY, advertKind, forcedBudgetAt, forcedBudgetTake, heldStepCrossed, nextAdvertDueMs, nextKeepAliveMs,
  type AdvertFacts, type AdvertPolicyParams
} from './advert-policy.js'
import { AdvertBudgets, ADVERT_BURST } from './advert-budget.js'

/** Adverts are published at most this often (urgent changes; see advert-policy.ts). */
export const DEFAULT_MIN_ADVERT_INTERVAL_MS = DEFAULT_ADVERT_POLICY.minIntervalMs

/**
 * Adverts of one image from one sender (the signing author, not the forwarding peer) beyond a burst of this
 * many, refilled at twice the rate an honest agent can publish (one per minIntervalMs), are rejected before
 * they are decoded. An honest burst is bounded by gossip's message cache (a reconnecting peer is sent a few
 * seconds of history), well under it. Without the bound a flood of validly signed adverts (the same advert
 * seq replayed, or a new seq each time) was validated, message by message, at any rate: 1,200 in 3 s cost
 * an agent 1.3 CPU-seconds and, as fresh adverts are accepted, every agent they were forwarded to as well.
 * A Reject costs the delivering peer gossip score (graylisted: its messages are dropped unread, but still
 * received and decrypted: 0.35-0.4 CPU-seconds per 1,200), and honest forwarders only forward what passed the
 * same bound. An author that keeps flooding us directly (ADVERT_BURST rejected before its budget is full again)
 * is banned. The bucket: advert-budget.ts.
 */

export interface AdvertsInit {
  profiles?: ProfileProvider
  /** Our upload load, 0..1. */
  uploadLoad: () => number
  liveChildren: (state: ImageState) => string[]
  childLimitOf: (state: ImageState) => number
  /** Whether we refuse agents attaching with us as their only parent (children.ts). */
  soleFullOf?: (state: ImageState) => boolean
  /** A candidate became eligible while we lack parents: select now. */
  scheduleHeartbeat: (state: ImageState) => void
  /** A peer advertised a profile: maybe fetch it. */
  maybeFetchProfile: (state: ImageState) => void
  policy?: Partial<AdvertPolicyParams>
  /** Bans a peer (as a corrupt block would): here, the author of an advert flood sent to us directly. */
  ban: (peerId: string, reason: string) => void
}

export interface Adverts {
  /** Something may have changed (heartbeat, blocks, children): publishes now or later as the policy says. */
  publish: (state: ImageState) => void
  /** The same, for event handlers (kept apart so call sites say which they are). */
  publishSoon: (state: ImageState) => void
  /**
   * Blocks were added: with an advert already due within the soft interval, only a held-fraction step crossed or
   * the image completed (urgent) can bring it sooner, so nothing else is evaluated. An agent receives a block
   * every few hundred microseconds in a wave; evaluating the whole policy each time (facts, subscribers) was
   * 1.6 % of its CPU.
   */
  publishOnBlocks: (state: ImageState) => void
  /** A peer subscribed to the topic: tell it about us soon (urgent). */
  publishForced: (state: ImageState) => void
  /** Adverts published so far (all images). */
  published: () => number
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
  const policy: AdvertPolicyParams = { ...DEFAULT_ADVERT_POLICY, ...init.policy }
  let publishedCount = 0
  /** Per image topic and sender: the advert rate bound (see ADVERT_BURST), refilled at twice an honest agent's rate. */
  const budgets = new AdvertBudgets(policy.minIntervalMs > 0 ? 2 / policy.minIntervalMs : Infinity)

  /** Takes one advert from the sender's budget; returns 0, or when it is spent, the adverts rejected since it was full. */
  const overBudget = (state: ImageState, sender: string): number => {
    const rejected = budgets.take(`${state.topic} ${sender}`, clock.nowMs())
    if (rejected === 1) logger.warn('adverts over the rate bound rejected', { image: state.imageId, sender, burst: ADVERT_BURST })
    return rejected
  }

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

  const factsOf = (state: ImageState): AdvertFacts | undefined => {
    if (state.manifest === undefined || state.store === undefined) return undefined
    const childLimit = init.childLimitOf(state)
    return {
      depth: isSeed(state) ? 0 : state.depth,
      heldBlocks: heldBlocks(state),
      totalBlocks: state.manifest.blockCount,
      childCount: Math.min(init.liveChildren(state).length, childLimit),
      childLimit,
      uploadLoad: init.uploadLoad(),
      soleFull: init.soleFullOf?.(state) === true,
      profileVersion: advertisedProfile(state.imageId).profile?.version,
      booting: init.profiles?.booting?.(state.imageId) ?? 0
    }
  }

  const buildAdvert = (state: ImageState, facts: AdvertFacts, lifetimeMs: number): AdvertBody | undefined => {
    if (state.manifest === undefined || state.store === undefined) return undefined
    state.seq = Math.max(state.seq + 1, Date.now())
    return {
      imageId: state.imageId,
      rootHex: state.manifest.rootHex,
      seq: state.seq,
      depth: facts.depth,
      heldBlocks: facts.heldBlocks,
      totalBlocks: facts.totalBlocks,
      childCount: facts.childCount,
      childLimit: facts.childLimit,
      uploadLoad: facts.uploadLoad,
      manifestAvailable: true,
      summary: summarize(state.store.presentBitmap(), facts.totalBlocks),
      addrs: advertAddrs(),
      ...advertisedProfile(state.imageId),
      booting: facts.booting ?? 0,
      ...(facts.soleFull === true ? { soleFull: true } : {}),
      lifetimeMs
    }
  }

  const cancel = (state: ImageState): void => {
    if (state.publishTimer !== undefined) { clearTimeout(state.publishTimer); state.publishTimer = undefined }
    state.publishDueMs = undefined
  }

  const publishNow = (state: ImageState, facts: AdvertFacts): void => {
    const node = components.node()
    if (node === undefined) return
    cancel(state)
    const keepAliveMs = nextKeepAliveMs(advertKind(facts, state.lastPublished, state.advertForced, policy), state.keepAliveMs, policy)
    const advert = buildAdvert(state, facts, ADVERT_LIFETIME_KEEPALIVES * keepAliveMs)
    if (advert === undefined) return
    state.keepAliveMs = keepAliveMs
    const nowMs = clock.nowMs()
    if (state.advertForced && nowMs < state.lastPublishMs + policy.minIntervalMs) {
      // A forced advert sooner than the urgent bound: it takes one from the forced budget.
      state.forcedBudget = forcedBudgetTake(state.forcedBudget, nowMs, policy)
    }
    state.lastPublishMs = nowMs
    state.lastPublished = facts
    state.advertForced = false
    publishedCount++
    state.advertsPublished++
    node.services.pubsub.publish(state.topic, encodeAdvert(advert)).catch((err: Error) => {
      logger.warn('advert publish failed', { image: state.imageId, error: err.message })
    })
    // The next keep-alive is timed now, not left to a later publish() (a quiet seed has no heartbeat to call it).
    scheduleAt(state, state.lastPublishMs + keepAliveMs, state.lastPublishMs)
  }

  /** One timer per image, at the earliest due time; it re-evaluates (facts may have changed meanwhile). */
  const scheduleAt = (state: ImageState, dueMs: number, nowMs: number): void => {
    if (state.publishDueMs !== undefined && state.publishDueMs <= dueMs) return
    cancel(state)
    state.publishDueMs = dueMs
    state.publishTimer = setTimeout(() => { state.publishTimer = undefined; state.publishDueMs = undefined; publish(state) }, dueMs - nowMs)
    state.publishTimer.unref()
  }

  const publish = (state: ImageState): void => {
    const node = components.node()
    if (node === undefined || components.stopped()) return
    // Gossip delivers an advert only to the topic's subscribers, and one that subscribes later is sent one at
    // once (publishForced): with none, signing an advert is waste. It was most of a start's peer-layer work
    // (an advert per image, before any peer connects), and a lone agent's keep-alives at rest.
    if (node.services.pubsub.getSubscribers(state.topic).length === 0) return
    const facts = factsOf(state)
    if (facts === undefined) return
    const nowMs = clock.nowMs()
    const forcedEarly = state.advertForced && forcedBudgetAt(state.forcedBudget, nowMs, policy).tokens >= 1
    const dueMs = nextAdvertDueMs({ facts, last: state.lastPublished, lastPublishMs: state.lastPublishMs, forced: state.advertForced, forcedEarly, keepAliveMs: state.keepAliveMs, params: policy })
    if (dueMs <= nowMs) { publishNow(state, facts); return }
    scheduleAt(state, dueMs, nowMs)
  }

  const publishOnBlocks = (state: ImageState): void => {
    const last = state.lastPublished
    // Due no later than a soft change would make it (not a keep-alive further off), and nothing urgent.
    const dueSoonEnough = state.publishDueMs !== undefined && state.publishDueMs <= state.lastPublishMs + policy.softIntervalMs
    if (dueSoonEnough && last !== undefined && !heldStepCrossed(heldBlocks(state), last, policy)) return
    publish(state)
  }

  const publishForced = (state: ImageState): void => {
    state.advertForced = true
    publish(state)
  }

  const validator = (state: ImageState) => (from: PeerId, message: { type: string, data: Uint8Array, from?: PeerId }): TopicValidatorResult => {
    if (images.get(state.imageId) !== state) return TopicValidatorResult.Ignore
    if (message.type !== 'signed' || message.from === undefined) return TopicValidatorResult.Reject
    const sender = message.from.toString()
    if (sender === selfPeerId) return TopicValidatorResult.Ignore
    if (peers.isBanned(sender)) return TopicValidatorResult.Reject
    const rejected = overBudget(state, sender)
    if (rejected > 0) {
      // Sent to us directly by its author at twice the burst over the bound: a flooder, not gossip's jitter.
      // Graylisting alone still lets it cost us reading and decrypting every message; a ban hangs up on it.
      if (rejected >= ADVERT_BURST && from.toString() === sender) init.ban(sender, `flooded adverts of ${state.imageId}`)
      return TopicValidatorResult.Reject
    }
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
    // Back after it hung up (restarted, or reachable again): an earlier failed or refused admission says nothing
    // of it now. The origin restarted during a wave: its children had failed to reach it, were excluded for a
    // heartbeat, and re-attached at their next heartbeat, about a second after it was back (issue 12).
    const returned = previous?.hungUp === true
    if (returned) state.refused.delete(sender)
    // A candidate that just became eligible (new, back, or attached: depth known) while we lack parents: select
    // now rather than at the next heartbeat.
    const newlyEligible = verdict.advert.depth !== null && (previous === undefined || returned || previous.advert.depth === null)
    if (newlyEligible && state.parents.length < params.parentCount && state.store !== undefined && !isSeed(state)) init.scheduleHeartbeat(state)
    if (verdict.advert.profile !== undefined || verdict.advert.booting !== undefined) init.maybeFetchProfile(state)
    events.notify()
    events.sourcesChanged(verdict.advert.rootHex)
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
    budgets.forget(`${state.topic} `)
  }

  return { publish, publishSoon: publish, publishOnBlocks, publishForced, published: () => publishedCount, subscribe, unsubscribe, cancel }
}
