// Boot profiles from peers: when a peer advertises a newer profile of an image than ours, fetch it over
// /vmthunder/profile/1 and offer it to the profile provider. Bounded: one fetch in flight per image, one start
// per image per interval, a global cap per minute; a peer that failed is not asked again for a while.

import { peerIdFromString } from '@libp2p/peer-id'
import type { AdvertBody } from './advert.js'
import { PROFILE_FETCH_TIMEOUT_MS, fetchProfileFrom, type ProfileProvider } from './profile-protocol.js'
import type { ImageState, ServiceComponents } from './components.js'

/** Profile fetches: at most one in flight per image, one start per image per interval, this many per minute in all. */
const PROFILE_FETCH_INTERVAL_MS = 2000
const MAX_PROFILE_FETCHES_PER_MINUTE = 30
/** A peer whose profile did not decode or fit is not asked again for this long; one that was busy or had none, briefly. */
const PROFILE_BAD_EXCLUDE_MS = 10 * 60_000
const PROFILE_FAILED_EXCLUDE_MS = 5000
/** Profile versions remembered per image as already fetched (adopted or not needed). */
const MAX_PROFILE_VERSIONS_SEEN = 64

export interface ProfileFetcherInit {
  profiles?: ProfileProvider
}

export interface ProfileFetcher {
  maybeFetch: (state: ImageState) => void
}

export const createProfileFetcher = (init: ProfileFetcherInit) => (components: ServiceComponents): ProfileFetcher => {
  const { logger, clock, peers, events } = components
  const profileFetchStarts: number[] = []

  const maybeFetch = (state: ImageState): void => {
    const provider = init.profiles
    const node = components.node()
    if (provider === undefined || node === undefined || components.stopped() || state.store === undefined || state.profileFetching) return
    const nowMs = clock.nowMs()
    if (nowMs - state.lastProfileFetchMs < PROFILE_FETCH_INTERVAL_MS) return
    const local = provider.local(state.imageId)
    let best: { peer: string, profile: NonNullable<AdvertBody['profile']> } | undefined
    for (const [peer, entry] of state.candidates) {
      const p = entry.advert.profile
      if (p === undefined || peers.isBanned(peer) || (state.profileExcluded.get(peer) ?? 0) > nowMs || state.profileVersionsSeen.has(p.version)) continue
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
        const signal = AbortSignal.any([components.stopSignal, AbortSignal.timeout(PROFILE_FETCH_TIMEOUT_MS)])
        const bytes = await fetchProfileFrom(components.requireNode(), peerIdFromString(peer), state.imageId, { signal, maxBytes: profile.sizeBytes })
        const adopted = await provider.adopt(state.imageId, bytes)
        state.profilesFetched++
        state.profileVersionsSeen.add(profile.version)
        if (state.profileVersionsSeen.size > MAX_PROFILE_VERSIONS_SEEN) state.profileVersionsSeen.delete(state.profileVersionsSeen.values().next().value as string)
        logger.info(adopted ? 'boot profile adopted from a peer' : 'peer profile not adopted', { image: state.imageId, peer, version: profile.version, boots: profile.boots })
      } catch (err) {
        if (components.stopped()) return
        const name = (err as Error).name
        const bad = name === 'ProfileDecodeError' || name === 'ProfileMismatchError' || name === 'InvalidDataLengthError' || name === 'ProfileFetchError'
        state.profileExcluded.set(peer, clock.nowMs() + (bad ? PROFILE_BAD_EXCLUDE_MS : PROFILE_FAILED_EXCLUDE_MS))
        logger.warn('profile fetch failed', { image: state.imageId, peer, error: (err as Error).message, excludedMs: bad ? PROFILE_BAD_EXCLUDE_MS : PROFILE_FAILED_EXCLUDE_MS })
      } finally {
        state.profileFetching = false
        events.notify()
      }
    })()
  }

  return { maybeFetch }
}
