// The private-network pre-shared key file: the go-ipfs/libp2p 'swarm.key' format that @libp2p/pnet reads.
//   /key/swarm/psk/1.0.0/
//   /base16/
//   <64 hex digits>
// Only holders of the same key can complete a connection (every byte is XSalsa20-encrypted with it before the
// secure channel starts), so a node without it cannot join, not even the gossip.

import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import { PskFormatError } from './errors.js'

export const PSK_HEADER = '/key/swarm/psk/1.0.0/'
export const PSK_CODEC = '/base16/'
const PSK_KEY_BYTES = 32

/** A new key in the file format, as bytes (what pnet's preSharedKey({ psk }) takes). */
export function generatePsk (): Uint8Array {
  return new TextEncoder().encode(`${PSK_HEADER}\n${PSK_CODEC}\n${randomBytes(PSK_KEY_BYTES).toString('hex')}\n`)
}

/** Checks the format (throws PskFormatError) and returns the bytes normalised to the canonical layout. */
export function parsePsk (bytes: Uint8Array): Uint8Array {
  const lines = Buffer.from(bytes).toString('utf8').split(/\r?\n/).map(line => line.trim()).filter(line => line.length > 0)
  if (lines.length !== 3 || lines[0] !== PSK_HEADER || lines[1] !== PSK_CODEC || !/^[0-9a-fA-F]{64}$/.test(lines[2])) {
    throw new PskFormatError(`a PSK file has three lines: '${PSK_HEADER}', '${PSK_CODEC}' and 64 hex digits`)
  }
  return new TextEncoder().encode(`${PSK_HEADER}\n${PSK_CODEC}\n${lines[2].toLowerCase()}`)
}

export async function readPskFile (path: string): Promise<Uint8Array> {
  let bytes: Buffer
  try {
    bytes = await readFile(path)
  } catch (err) {
    throw new PskFormatError(`cannot read PSK file ${path}: ${(err as Error).message}`)
  }
  if (bytes.length > 1024) throw new PskFormatError(`PSK file ${path} is too large to be a key`)
  try {
    return parsePsk(bytes)
  } catch (err) {
    throw new PskFormatError(`${path}: ${(err as Error).message}`)
  }
}

/** Writes a new key file (mode 0600); refuses to overwrite an existing one. */
export async function writeNewPskFile (path: string): Promise<void> {
  await writeFile(path, generatePsk(), { mode: 0o600, flag: 'wx' })
}
