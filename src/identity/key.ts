// The agent's persistent Ed25519 identity: signs the manifests it originates and is its libp2p peer identity.
// Stored as the 32-byte seed in DATA_DIR/identity.key (mode 0600), created on first start.

import { randomBytes } from 'node:crypto'
import { mkdir, readFile, writeFile, chmod, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromPublicKey, peerIdFromString } from '@libp2p/peer-id'
import { publicKeyFromRaw } from '@libp2p/crypto/keys'
import { signingKeyFromSeed, type SigningKey } from '../blockstack/signing.js'

export const IDENTITY_FILE = 'identity.key'

export class IdentityFileError extends Error {
  override name = 'IdentityFileError'
}

export class PublicKeyFormatError extends Error {
  override name = 'PublicKeyFormatError'
}

export interface Identity extends SigningKey {
  seed: Uint8Array
  /** The libp2p peer id string derived from the public key (12D3KooW...). */
  peerId: string
  publicKeyHex: string
}

/** The libp2p peer id string (12D3KooW...) of a raw Ed25519 public key; throws on a malformed key. */
export function peerIdOfPublicKey (publicKey: Uint8Array): string {
  return peerIdFromPublicKey(publicKeyFromRaw(publicKey)).toString()
}

export function identityFromSeed (seed: Uint8Array): Identity {
  const key = signingKeyFromSeed(seed)
  return {
    ...key,
    seed,
    peerId: peerIdOfPublicKey(key.publicKey),
    publicKeyHex: Buffer.from(key.publicKey).toString('hex')
  }
}

export async function loadOrCreateIdentity (dataDir: string): Promise<Identity> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 })
  const path = join(dataDir, IDENTITY_FILE)
  let text: string | undefined
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  if (text === undefined) {
    const seed = randomBytes(32)
    const body = JSON.stringify({ type: 'Ed25519', seed: seed.toString('hex') }) + '\n'
    try {
      await writeFile(path, body, { mode: 0o600, flag: 'wx' })
      return identityFromSeed(seed)
    } catch (err) {
      // Another process created it first: read theirs.
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      text = await readFile(path, 'utf8')
    }
  }
  const mode = (await stat(path)).mode & 0o777
  if ((mode & 0o077) !== 0) await chmod(path, 0o600)
  let parsed: { type?: unknown, seed?: unknown }
  try {
    parsed = JSON.parse(text)
  } catch {
    throw new IdentityFileError(`${path} is not valid JSON`)
  }
  if (parsed.type !== 'Ed25519' || typeof parsed.seed !== 'string' || !/^[0-9a-f]{64}$/.test(parsed.seed)) {
    throw new IdentityFileError(`${path}: expected {"type":"Ed25519","seed":"<64 hex digits>"}`)
  }
  return identityFromSeed(Buffer.from(parsed.seed, 'hex'))
}

/**
 * Parses an origin public key as an operator writes it: 64 hex digits (raw Ed25519) or an Ed25519 libp2p
 * peer id (12D3KooW..., which embeds the key). Returns the raw 32 bytes.
 */
export function parsePublicKey (text: string): Uint8Array {
  const trimmed = text.trim()
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) return new Uint8Array(Buffer.from(trimmed, 'hex'))
  try {
    const peerId = peerIdFromString(trimmed)
    if (peerId.type === 'Ed25519' && peerId.publicKey !== undefined) return peerId.publicKey.raw
  } catch {}
  throw new PublicKeyFormatError(`not an Ed25519 public key: expected 64 hex digits or a 12D3KooW... peer id, got '${trimmed.slice(0, 80)}'`)
}
