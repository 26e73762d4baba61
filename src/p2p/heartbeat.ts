// The per-image heartbeat that keeps this agent's place in each image's tree (every heartbeatMs; also early
// when the first adverts arrive or a parent failed):
//   1. measure RTT to a bounded number of candidates (ping on the reused block stream);
//   2. selectParents (src/topology) with the fresh adverts, RTTs, current parents, exclusions;
//   3. ask admission of new parents (they may refuse: bounded fan-out), renew the lease of kept ones (a failed
//      renewal marks the parent failed, so it is replaced at the next step), tell dropped ones we left;
//   4. publish our advert (the advert policy decides whether anything worth saying changed).
// An agent holding every block is a seed (depth 0) and has no parents.

import {
  depthFromParents, selectParents, type Candidate, type ParentState
} from '../topology/index.js'
import { toTopologyAdvert } from './advert.js'
import { isSeed, type ImageState, type ServiceComponents } from './components.js'

/** A parent that refused us is not asked again for this many heartbeats. */
const REFUSAL_EXCLUDE_HEARTBEATS = 5
/** RTT probes per image per heartbeat (bounded work per heartbeat). */
const MAX_PROBES_PER_HEARTBEAT = 8
/** A candidate whose RTT was sampled more recently than this is not probed again (a probe costs both ends CPU). */
const PROBE_REFRESH_MS = 10_000
/** Admission and probes may need a new connection (handshake) on a busy host: not bounded by a short heartbeat. */
const MIN_EXCHANGE_TIMEOUT_MS = 2000

export interface HeartbeatInit {
  liveChildren: (state: ImageState) => string[]
  /** End of a heartbeat: advertise what changed. */
  publish: (state: ImageState) => void
  maybeFetchProfile: (state: ImageState) => void
}

export interface Heartbeat {
  start: () => void
  stop: () => void
  /** Runs a heartbeat of the image now (or right after the one running). */
  schedule: (state: ImageState) => void
  /** Tells a parent we left (best effort). */
  leaveParent: (state: ImageState, peerId: string) => Promise<void>
}

export const createHeartbeat = (init: HeartbeatInit) => (components: ServiceComponents): Heartbeat => {
  const { logger, clock, random, params, images, peers, events, selfPeerId } = components
  let timer: NodeJS.Timeout | undefined

  const leaveParent = async (state: ImageState, peerId: string): Promise<void> => {
    if (state.manifest === undefined || components.node() === undefined) return
    try {
      await peers.existingLink(peerId)?.admit(state.manifest.root, true, AbortSignal.timeout(params.heartbeatMs))
    } catch {}
  }

  const candidatesOf = (state: ImageState): Candidate[] => {
    const out: Candidate[] = []
    for (const [peerId, entry] of state.candidates) {
      out.push({ advert: toTopologyAdvert(entry.advert, peerId), receivedAtMs: entry.receivedAtMs, rttMs: peers.existingLink(peerId)?.rttMs })
    }
    return out
  }

  const schedule = (state: ImageState): void => {
    if (state.heartbeatRunning) { state.heartbeatAgain = true; return }
    void heartbeat(state)
  }

  const heartbeat = async (state: ImageState): Promise<void> => {
    if (components.node() === undefined || components.stopped() || state.heartbeatRunning) return
    state.heartbeatRunning = true
    try {
      do {
        state.heartbeatAgain = false
        await heartbeatOnce(state)
      } while (state.heartbeatAgain && !components.stopped())
    } catch (err) {
      logger.error('heartbeat failed', { image: state.imageId, error: (err as Error).message })
    } finally {
      state.heartbeatRunning = false
      events.notify()
      if (state.manifest !== undefined) events.sourcesChanged(state.manifest.rootHex)
    }
  }

  const heartbeatOnce = async (state: ImageState): Promise<void> => {
    const nowMs = clock.nowMs()
    const manifest = state.manifest
    // Forget adverts long gone (bounded memory); selection itself ignores those older than advertTimeoutMs.
    for (const [peer, entry] of state.candidates) if (nowMs - entry.receivedAtMs > 10 * params.advertTimeoutMs) state.candidates.delete(peer)
    for (const [peer, until] of state.refused) if (until <= nowMs) state.refused.delete(peer)
    for (const [peer, until] of state.profileExcluded) if (until <= nowMs) state.profileExcluded.delete(peer)
    if (manifest === undefined || state.store === undefined) return
    const signal = AbortSignal.any([components.stopSignal, AbortSignal.timeout(Math.max(params.heartbeatMs, MIN_EXCHANGE_TIMEOUT_MS))])

    // 1. RTT probes: candidates without a measurement first, then the least recently probed (bounded).
    const probes = [...state.candidates.keys()]
      .filter(peer => !peers.isBanned(peer) && !state.parents.some(p => p.peerId === peer) &&
        nowMs - (peers.existingLink(peer)?.rttSampledAtMs ?? -Infinity) >= PROBE_REFRESH_MS)
      .sort((a, b) => Number(peers.existingLink(a)?.rttMs !== undefined) - Number(peers.existingLink(b)?.rttMs !== undefined) || random() - 0.5)
      .slice(0, MAX_PROBES_PER_HEARTBEAT)
    // Bounded: a probe that needs a new connection on a busy host finishes in the background and counts next time.
    const probeSignal = AbortSignal.any([signal, AbortSignal.timeout(Math.max(params.heartbeatMs / 2, 300))])
    await Promise.allSettled(probes.map(async peer => await peers.link(peer).ping(probeSignal)))

    // 2. Selection.
    const excluded = new Set<string>([...state.refused.keys()])
    for (const peer of state.candidates.keys()) if (peers.isBanned(peer)) excluded.add(peer)
    const seed = isSeed(state)
    const result = selectParents({
      nowMs: clock.nowMs(),
      selfPeerId,
      selfIsSeed: seed,
      candidates: candidatesOf(state),
      parents: state.parents,
      excluded,
      params,
      selfDepth: seed ? 0 : state.depth,
      childCount: init.liveChildren(state).length,
      imageId: state.imageId,
      rootHex: manifest.rootHex
    })
    const before = new Set(state.parents.map(p => p.peerId))
    for (const dropped of result.dropped) {
      if (dropped.reason !== 'failed') void leaveParent(state, dropped.peerId)
    }

    // 3. Admission of new parents, lease renewal of kept ones (both also measure RTT).
    const chosen = await Promise.all(result.parents.map(async peerId => {
      try {
        const reply = await peers.link(peerId).admit(manifest.root, false, signal)
        if (!reply.accepted) {
          state.refused.set(peerId, clock.nowMs() + REFUSAL_EXCLUDE_HEARTBEATS * params.heartbeatMs)
          return undefined
        }
        const existing = state.parents.find(p => p.peerId === peerId)
        return { peerId, sinceMs: existing?.sinceMs ?? clock.nowMs(), failed: false }
      } catch (err) {
        if (components.stopSignal.aborted) return undefined
        const existing = state.parents.find(p => p.peerId === peerId)
        // A kept parent that did not answer is marked failed: the next selection replaces it at once.
        if (existing !== undefined) return { ...existing, failed: true }
        logger.warn('admission failed', { image: state.imageId, peer: peerId, error: (err as Error).message })
        state.refused.set(peerId, clock.nowMs() + params.heartbeatMs)
        return undefined
      }
    }))
    state.parents = chosen.filter((p): p is ParentState => p !== undefined)
    const working = state.parents.filter(p => !p.failed)
    state.depth = isSeed(state)
      ? 0
      : depthFromParents(working.map(p => state.candidates.get(p.peerId)?.advert.depth ?? null))
    const changed = state.parents.length !== before.size || state.parents.some(p => !before.has(p.peerId))
    if (changed) {
      logger.info('parents changed', {
        image: state.imageId, parents: state.parents.map(p => p.peerId), depth: state.depth, dropped: result.dropped, refused: result.parents.filter(p => !state.parents.some(q => q.peerId === p))
      })
    }
    // A failed parent is replaced now, not a heartbeat later.
    if (state.parents.some(p => p.failed)) state.heartbeatAgain = true

    // 4. Advert; and a newer profile a peer advertised, if an earlier fetch did not get it.
    init.publish(state)
    init.maybeFetchProfile(state)
  }

  const start = (): void => {
    timer = setInterval(() => {
      for (const state of images.values()) void heartbeat(state)
    }, params.heartbeatMs)
    timer.unref()
    for (const state of images.values()) schedule(state)
  }

  const stop = (): void => {
    if (timer !== undefined) clearInterval(timer)
  }

  return { start, stop, schedule, leaveParent }
}
