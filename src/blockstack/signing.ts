// Ed25519 with node:crypto on raw keys: a 32-byte seed (private) and a 32-byte public key, the same key
// material the libp2p node uses for its identity (src/identity converts between the two forms).

import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'

export interface SigningKey {
  /** Raw 32-byte Ed25519 public key. */
  publicKey: Uint8Array
  /** node:crypto key object for the private key. */
  privateKey: KeyObject
}

const PKCS8_ED25519_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')
const SPKI_ED25519_PREFIX = Buffer.from('302a300506032b6570032100', 'hex')

export function signingKeyFromSeed (seed: Uint8Array): SigningKey {
  if (seed.byteLength !== 32) throw new RangeError('an Ed25519 seed is 32 bytes')
  const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519_PREFIX, seed]), format: 'der', type: 'pkcs8' })
  const jwk = createPublicKey(privateKey).export({ format: 'jwk' })
  return { privateKey, publicKey: new Uint8Array(Buffer.from(jwk.x as string, 'base64url')) }
}

export function signEd25519 (key: SigningKey, message: Uint8Array): Uint8Array {
  return new Uint8Array(sign(null, message, key.privateKey))
}

export function verifyEd25519 (publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  if (publicKey.byteLength !== 32 || signature.byteLength !== 64) return false
  try {
    const key = createPublicKey({ key: Buffer.concat([SPKI_ED25519_PREFIX, publicKey]), format: 'der', type: 'spki' })
    return verify(null, message, key, signature)
  } catch {
    return false
  }
}
