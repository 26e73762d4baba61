// The per-image heartbeat that keeps this agent's place in each image's tree (every heartbeatMs; also early
// when the first adverts arrive or a parent failed):
//   1. measure RTT to a bounded number of candidates (ping on the reused block stream; an agent without a
//      working parent does not wait for the answers);
//   2. selectParents (src/topology) with the fresh adverts, RTTs, current parents, exclusions;
//   3. ask admission of new parents (they may refuse: bounded fan-out), renew the lease of kept ones (a failed
//      renewal marks the parent failed, so it is replaced at the next step), tell dropped ones we left;
//   4. publish our advert (the advert policy decides whether anything worth saying changed).
// An agent holding every block is a seed (depth 0) and has no parents.

import {
  advertLifetimeMs, planHeartbeat, settleHeartbeat, type AdmissionReply, type Candidate
} from '../topology/index.js'
import type { Manifest } from '../blockstack/manifest.js'
import { peerIdOfPublicKey } from '../identity/key.js'
import { toTopologyAdvert } from './advert.js'
import { isSeed, type ImageState, type ServiceComponents } from './components.js'
import { deadline, type Deadline } from '../blockstack/deadline.js'
import type { Beat } from '../beat.js'

/** The peer id of the agent that signed a manifest (its origin); undefined if the key is not an Ed25519 one. */
const originIds = new WeakMap<Manifest, string | undefined>()
export function originPeerIdOf (manifest: Manifest): string | undefined {
  if (!originIds.has(manifest)) {
    let id: string | undefined
    try { id = peerIdOfPublicKey(manifest.originPublicKey) } catch {}
    originIds.set(manifest, id)
  }
  return originIds.get(manifest)
}

/** RTT probes per image per heartbeat (bounded work per heartbeat). */
const MAX_PROBES_PER_HEARTBEAT = 8
/** A candidate whose RTT was sampled more recently than this is not probed again (a probe costs both ends CPU). */
const PROBE_REFRESH_MS = 10_000
/** Admission and probes may need a new connection (handshake) on a busy host: not bounded by a short heartbeat. */
const MIN_EXCHANGE_TIMEOUT_MS = 2000
/**
 * A seed with no parent and no child runs its heartbeat once in this many ticks when peers advertise the image
 * (never when none do): it selects nobody, and its adverts have their own timer (adverts.ts), so what is left is
 * housekeeping (forgetting old adverts, a moved load, a newer profile). Every second, 10 such images' heartbeats
 * were a sixth of an agent's CPU at rest in a cluster of seeds.
 */
export const SEED_HEARTBEAT_EVERY_TICKS = 10

export interface HeartbeatInit {
  liveChildren: (state: ImageState) => string[]
  /** End of a heartbeat: advertise what changed. */
  publish: (state: ImageState) => void
  maybeFetchProfile: (state: ImageState) => void
  /** The agent's beat (src/beat.ts): ticks on it when its period is heartbeatMs, else on a timer of its own. */
  beat?: Beat
}

export interface Heartbeat {
  start: () => void
  stop: () => void
  /** Runs a heartbeat of the image now (or right after the one running). */
  schedule: (state: ImageState) => void
  /** Tells a parent we left (best effort). */
  leaveParent: (state: ImageState, peerId: string) => Promise<void>
  /** What the timer does every heartbeatMs: a heartbeat of every image that needs one (callable in tests). */
  tick: () => void
}

export const createHeartbeat = (init: HeartbeatInit) => (components: ServiceComponents): Heartbeat => {
  const { logger, clock, random, params, images, peers, events, selfPeerId } = components
  let timer: NodeJS.Timeout | undefined
  let leaveBeat: (() => void) | undefined

  const leaveParent = async (state: ImageState, peerId: string): Promise<void> => {
    if (state.manifest === undefined || components.node() === undefined) return
    const link = peers.existingLink(peerId)
    if (link === undefined) return
    const bound = deadline(components.stopSignal, params.heartbeatMs, 'leave')
    try {
      await link.admit(state.manifest.root, true, bound.signal)
    } catch {
    } finally {
      bound.dispose()
    }
  }

  const candidatesOf = (state: ImageState): Candidate[] => {
    const out: Candidate[] = []
    for (const [peerId, entry] of state.candidates) {
      out.push({ advert: toTopologyAdvert(entry.advert, peerId), receivedAtMs: entry.receivedAtMs, lifetimeMs: entry.advert.lifetimeMs, rttMs: peers.existingLink(peerId)?.rttMs })
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
    // Forget adverts long gone (bounded memory); selection itself ignores those past their lifetime.
    for (const [peer, entry] of state.candidates) if (nowMs - entry.receivedAtMs > 10 * advertLifetimeMs(entry.advert, params)) state.candidates.delete(peer)
    for (const [peer, until] of state.profileExcluded) if (until <= nowMs) state.profileExcluded.delete(peer)
    if (manifest === undefined || state.store === undefined) return
    // The exchanges' bound, made only when there is an exchange: an idle seed's heartbeats (10 images, once a
    // second each) made two AbortSignal.timeout timers apiece that node clears only at GC, a quarter of an idle
    // daemon's CPU with its firing and its DOMExceptions. Disposed at the end of the heartbeat.
    let exchange: Deadline | undefined
    const exchangeSignal = (): AbortSignal => {
      exchange ??= deadline(components.stopSignal, Math.max(params.heartbeatMs, MIN_EXCHANGE_TIMEOUT_MS), 'heartbeat exchange')
      return exchange.signal
    }
    try {
      await exchangeOnce(state, manifest, nowMs, exchangeSignal)
    } finally {
      exchange?.dispose()
    }
  }

  const exchangeOnce = async (state: ImageState, manifest: Manifest, nowMs: number, exchangeSignal: () => AbortSignal): Promise<void> => {
    // 1. RTT probes: candidates without a measurement first, then the least recently probed (bounded). A seed
    // takes no parents, so it measures nobody.
    const probes = isSeed(state)
      ? []
      : [...state.candidates.keys()]
          .filter(peer => !peers.isBanned(peer) && !state.parents.some(p => p.peerId === peer) &&
            nowMs - (peers.existingLink(peer)?.rttSampledAtMs ?? -Infinity) >= PROBE_REFRESH_MS)
          .sort((a, b) => Number(peers.existingLink(a)?.rttMs !== undefined) - Number(peers.existingLink(b)?.rttMs !== undefined) || random() - 0.5)
          .slice(0, MAX_PROBES_PER_HEARTBEAT)
    // Bounded: a probe that needs a new connection on a busy host finishes in the background and counts next
    // time. Its own deadline is disposed when the probes settle, whenever that is.
    let probing: Promise<unknown> = Promise.resolve()
    if (probes.length > 0) {
      const probeBound = deadline(components.stopSignal, Math.max(params.heartbeatMs / 2, 300), 'probe')
      probing = Promise.allSettled(probes.map(async peer => await peers.link(peer).ping(probeBound.signal)))
        .finally(() => { probeBound.dispose() })
    }
    // An agent without a working parent selects at once, on the RTTs it has (unknown ones score as
    // unknownRttMs): its VM's reads wait for a parent. At the start of an 8-host wave the probes to the freshly
    // attached candidates took up to the 500 ms bound on a loaded host, each refused agent's second heartbeat
    // 0.5-0.6 s in all. The probes finish in the background and count from the next heartbeat.
    if (state.parents.some(p => !p.failed)) await probing

    // 2. Selection (src/topology/driver.ts: the same decisions as the simulator's). A seed selects nobody, so
    // its candidates are not converted for it.
    const selfIsSeed = isSeed(state)
    const plan = planHeartbeat({
      nowMs: clock.nowMs(),
      selfPeerId,
      selfIsSeed,
      candidates: selfIsSeed ? [] : candidatesOf(state),
      parents: state.parents,
      depth: state.depth,
      refusedUntil: state.refused,
      isBanned: peers.isBanned,
      params,
      childCount: init.liveChildren(state).length,
      imageId: state.imageId,
      rootHex: manifest.rootHex,
      originPeerId: originPeerIdOf(manifest)
    })
    for (const peerId of plan.leave) void leaveParent(state, peerId)

    // 3. Admission of new parents, lease renewal of kept ones (both also measure RTT).
    const replies = new Map<string, AdmissionReply>()
    const askedAtMs = clock.nowMs()
    // The parents we have: a kept parent hears how many we had after the last heartbeat (a child that asked for
    // three and was given one says 1 from its next renewal on), a new one all we ask now (we stripe over them if
    // they accept); and whether we attach from nothing (detached, no child): such an agent may be refused by a
    // relay at its bound of sole children, which counts its children by these reports (topology/admit.ts).
    const parentsNow = Math.max(1, state.parents.filter(p => !p.failed).length)
    const attaching = plan.selfDepth === null && plan.childCount === 0
    await Promise.all(plan.ask.map(async ({ peerId, kept }) => {
      try {
        const asked = { parentCount: Math.min(255, kept ? parentsNow : plan.ask.length), attaching }
        const reply = await peers.link(peerId).admit(manifest.root, false, exchangeSignal(), asked)
        replies.set(peerId, reply.accepted ? 'accepted' : 'refused')
      } catch (err) {
        if (components.stopSignal.aborted) return
        if (!kept) logger.warn('admission failed', { image: state.imageId, peer: peerId, error: (err as Error).message })
        // Frames that arrived since we asked prove the parent alive, only slow (a timeout on a loaded host).
        const heard = (peers.existingLink(peerId)?.lastHeardAtMs ?? -Infinity) >= askedAtMs
        replies.set(peerId, heard ? 'late' : 'error')
      }
    }))
    if (components.stopSignal.aborted) return
    const settled = settleHeartbeat(plan, {
      nowMs: clock.nowMs(),
      selfIsSeed: isSeed(state),
      parents: state.parents,
      replies,
      depthOf: peerId => state.candidates.get(peerId)?.advert.depth ?? null,
      heartbeatMs: params.heartbeatMs,
      orphanedSinceMs: state.orphanedSinceMs
    })
    state.parents = settled.parents
    if (state.parents.length > 0) state.attachedOnce = true
    state.refused = settled.refusedUntil
    state.depth = settled.depth
    const holdChanged = (settled.orphanedSinceMs === null) !== (state.orphanedSinceMs === null)
    state.orphanedSinceMs = settled.orphanedSinceMs
    if (settled.changed || holdChanged) {
      logger.info('parents changed', {
        image: state.imageId,
        parents: state.parents.map(p => p.peerId),
        depth: state.depth,
        orphaned: state.orphanedSinceMs !== null,
        dropped: plan.selection.dropped,
        refused: settled.refused
      })
    }
    // A failed parent is replaced now, not a heartbeat later.
    if (settled.again) state.heartbeatAgain = true

    // 4. Advert; and a newer profile a peer advertised, if an earlier fetch did not get it.
    init.publish(state)
    init.maybeFetchProfile(state)
  }

  /**
   * A seed with no parent and no child has nothing to decide or measure: it selects nobody, its adverts have
   * their own timer, and an agent that subscribes to the image gets its advert at once (adverts.ts). Alone (no
   * peer's advert) its heartbeat is skipped: an image server holds many images that no host uses at a time, and
   * 10 idle images' heartbeats were a sixth of an idle agent's CPU. With peers, it runs once in
   * SEED_HEARTBEAT_EVERY_TICKS ticks, for housekeeping.
   */
  const quietSeed = (state: ImageState): boolean =>
    state.parents.length === 0 && isSeed(state) && (state.children.size === 0 || init.liveChildren(state).length === 0)
  let ticks = 0

  const tick = (): void => {
    ticks++
    const housekeeping = ticks % SEED_HEARTBEAT_EVERY_TICKS === 0
    for (const state of images.values()) {
      if (!quietSeed(state) || (housekeeping && state.candidates.size > 0)) void heartbeat(state)
    }
  }

  const start = (): void => {
    if (init.beat?.periodMs === params.heartbeatMs) leaveBeat = init.beat.add(tick)
    else {
      timer = setInterval(tick, params.heartbeatMs)
      timer.unref()
    }
    for (const state of images.values()) schedule(state)
  }

  const stop = (): void => {
    if (timer !== undefined) clearInterval(timer)
    leaveBeat?.()
  }

  return { start, stop, schedule, leaveParent, tick }
}
