// The JSON form of a profile, for `vmthunderctl image profile export/import ID FILE` and for people:
//   { "format": "vmthunder-profile", "formatVersion": 1, "imageId", "rootHex", "blockSizeBytes", "blockCount",
//     "version", "boots", "entries": [[block, tMs, confidence], ...] }
// Import is as strict as the binary decoder; `version` is recomputed (a hand-edited file gets a new one).

import { ProfileDecodeError } from './errors.js'
import {
  decodeProfile, finalizeProfile, PROFILE_MAGIC, PROFILE_FORMAT_VERSION, MAX_PROFILE_ENTRIES,
  type BootProfile, type ProfileDecodeLimits, type ProfileEntry
} from './profile.js'

export const PROFILE_JSON_FORMAT = 'vmthunder-profile'
/** JSON text is about 25 bytes per entry; refuse more than this. */
export const MAX_PROFILE_JSON_BYTES = 32 * 1024 * 1024

export interface ProfileJson {
  format: typeof PROFILE_JSON_FORMAT
  formatVersion: number
  imageId: string
  rootHex: string
  blockSizeBytes: number
  blockCount: number
  version: string
  boots: number
  entries: Array<[number, number, number]>
}

export function profileToJson (p: BootProfile): ProfileJson {
  return {
    format: PROFILE_JSON_FORMAT,
    formatVersion: PROFILE_FORMAT_VERSION,
    imageId: p.imageId,
    rootHex: p.rootHex,
    blockSizeBytes: p.blockSizeBytes,
    blockCount: p.blockCount,
    version: p.version,
    boots: p.boots,
    entries: p.entries.map(e => [e.block, e.tMs, Math.round(e.confidence * 10000) / 10000])
  }
}

export function profileFromJson (value: unknown, limits: ProfileDecodeLimits = {}): BootProfile {
  const fail = (msg: string): never => { throw new ProfileDecodeError(msg) }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) fail('profile JSON must be an object')
  const o = value as Record<string, unknown>
  if (o.format !== PROFILE_JSON_FORMAT) fail(`not a profile (format must be "${PROFILE_JSON_FORMAT}")`)
  if (o.formatVersion !== PROFILE_FORMAT_VERSION) fail(`unsupported profile formatVersion ${String(o.formatVersion)}`)
  const num = (key: string): number => typeof o[key] === 'number' ? o[key] as number : fail(`${key} must be a number`)
  const str = (key: string): string => typeof o[key] === 'string' ? o[key] as string : fail(`${key} must be a string`)
  if (!Array.isArray(o.entries)) fail('entries must be an array')
  const raw = o.entries as unknown[]
  const maxEntries = Math.min(limits.maxEntries ?? MAX_PROFILE_ENTRIES, MAX_PROFILE_ENTRIES)
  if (raw.length > maxEntries) fail(`too many entries: ${raw.length} > ${maxEntries}`)
  const entries: ProfileEntry[] = raw.map((e, i) => {
    if (!Array.isArray(e) || e.length !== 3 || !e.every(x => typeof x === 'number' && Number.isFinite(x))) {
      return fail(`entry ${i} must be [block, tMs, confidence]`)
    }
    const [block, tMs, confidence] = e as [number, number, number]
    if (!(confidence > 0 && confidence <= 1)) fail(`entry ${i}: confidence must be in (0, 1]`)
    if (!(tMs >= 0)) fail(`entry ${i}: tMs must be >= 0`)
    return { block, tMs, confidence }
  })
  return finalizeProfile({
    imageId: str('imageId'),
    rootHex: str('rootHex'),
    blockSizeBytes: num('blockSizeBytes'),
    blockCount: num('blockCount'),
    boots: num('boots'),
    entries
  }, limits)
}

/** Parses a profile file in either form (binary magic "VTPF" or JSON text), bounded. */
export function parseProfileFile (data: Uint8Array, limits: ProfileDecodeLimits = {}): BootProfile {
  const magic = new TextDecoder().decode(data.subarray(0, 4))
  if (magic === PROFILE_MAGIC) return decodeProfile(data, limits)
  if (data.length > MAX_PROFILE_JSON_BYTES) throw new ProfileDecodeError(`profile file too large: ${data.length} bytes`)
  let value: unknown
  try {
    value = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(data))
  } catch {
    throw new ProfileDecodeError('profile file is neither a binary profile nor valid JSON')
  }
  return profileFromJson(value, limits)
}

export function formatProfileJson (p: BootProfile): string {
  // One entry per line: diffable and still compact.
  const { entries, ...head } = profileToJson(p)
  const headText = JSON.stringify(head, null, 2).replace(/\n}$/, '')
  return `${headText},\n  "entries": [\n${entries.map(e => `    ${JSON.stringify(e)}`).join(',\n')}\n  ]\n}\n`
}
