// The patches in patches/ (applied by patch-package when npm ci runs 'prepare') are in node_modules: every
// line a patch adds is present in the file it patches. Without them the agents still work, but spend more CPU
// per block (patches/README.md), so a setup that skipped them must not pass unnoticed.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { LengthPrefixedDecoder } from '@libp2p/utils'
import { Uint8ArrayList } from 'uint8arraylist'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..')

test('every line each patch adds is in the patched file', async () => {
  const patches = (await readdir(join(ROOT, 'patches'))).filter(f => f.endsWith('.patch'))
  assert.ok(patches.length >= 3, 'the patches are in the repository')
  for (const name of patches) {
    const text = await readFile(join(ROOT, 'patches', name), 'utf8')
    let file: string | undefined
    for (const line of text.split('\n')) {
      if (line.startsWith('+++ b/')) file = await readFile(join(ROOT, line.slice('+++ b/'.length)), 'utf8')
      else if (line.startsWith('+') && line.trim() !== '+') {
        assert.ok(file?.includes(line.slice(1)), `${name}: not applied (missing: ${line.slice(1).trim()})`)
      }
    }
  }
})

test('the length-prefixed decoder does not probe an empty buffer for a length', () => {
  let calls = 0
  const decoder = new LengthPrefixedDecoder({
    lengthDecoder: (data: Uint8Array | Uint8ArrayList) => {
      calls++
      if (data.byteLength < 2) throw new RangeError('short')
      return data instanceof Uint8Array ? (data[0] << 8) | data[1] : data.getUint16(0)
    },
    encodingLength: () => 2
  })
  const messages = [...decoder.decode(new Uint8Array([0, 3, 1, 2, 3, 0, 1, 9]))]
  assert.deepEqual(messages.map(m => [...m.subarray()]), [[1, 2, 3], [9]])
  assert.equal(calls, 2, 'one length decode per message, none on the empty remainder')
})
