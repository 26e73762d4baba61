// A hostile peer that floods adverts on an image topic, run as its own process (node --import tsx) so that
// the CPU a well-behaved agent spends on the flood can be measured with process.cpuUsage in the test process
// without the flooder's own signing in the figure. Test-only. Driven by JSON lines:
//
//   argv:   <victim multiaddr> <image id> <manifest root hex> <block count>
//   stdout: {"event":"ready","peerId":...}         connected, and the victim is in the topic
//           {"event":"done","published":N}          after each command
//   stdin:  {"cmd":"idle","windowMs":3000}          stay connected, publish nothing
//           {"cmd":"flood","mode":M,"perSecond":R,"windowMs":W}
//
// Modes (all gossip messages carry a valid StrictSign signature; only the advert inside differs):
//   garbage  random bytes: not an advert at all;
//   replay   one valid advert with the same advert seq every time (stale after the first);
//   fresh    valid adverts with a new, higher seq every time (each one news, were it not for the rate).

import '../../src/polyfill.js'
import { randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'
import { multiaddr } from '@multiformats/multiaddr'
import { identityFromSeed } from '../../src/identity/key.js'
import { createNode } from '../../src/p2p/node.js'
import { encodeAdvert, imageTopic, summarize } from '../../src/p2p/advert.js'

export type FloodMode = 'garbage' | 'replay' | 'fresh'
export type FlooderCommand = { cmd: 'idle', windowMs: number } | { cmd: 'flood', mode: FloodMode, perSecond: number, windowMs: number }

/** Publishing is paced in ticks of this many ms (the flooder's own pacing, not a wait in a test). */
const TICK_MS = 10
const READY_TIMEOUT_MS = 20_000

async function main (): Promise<void> {
  const [victimAddr, imageId, rootHex, blockCountText] = process.argv.slice(2)
  const blockCount = Number(blockCountText)
  const identity = identityFromSeed(randomBytes(32))
  const node = await createNode({ identity, listen: ['/ip4/127.0.0.1/tcp/0'] })
  const pubsub = node.services.pubsub
  const topic = imageTopic(imageId)
  pubsub.subscribe(topic)
  const victim = multiaddr(victimAddr)
  await node.dial(victim, { signal: AbortSignal.timeout(READY_TIMEOUT_MS) })
  const victimId = victimAddr.split('/p2p/')[1]
  const deadline = Date.now() + READY_TIMEOUT_MS
  while (!pubsub.getSubscribers(topic).some(p => p.toString() === victimId)) {
    if (Date.now() > deadline) throw new Error('the victim never joined the topic')
    await new Promise(resolve => setTimeout(resolve, TICK_MS))
  }
  const say = (line: object): void => { process.stdout.write(JSON.stringify(line) + '\n') }
  say({ event: 'ready', peerId: identity.peerId })

  const advert = (seq: number): Uint8Array => encodeAdvert({
    imageId, rootHex, seq, depth: 1, heldBlocks: 0, totalBlocks: blockCount, childCount: 0, childLimit: 4, uploadLoad: 0,
    manifestAvailable: true, summary: summarize(new Uint8Array(Math.ceil(blockCount / 8)), blockCount), addrs: []
  })
  let seq = Date.now()
  const replay = advert(seq)
  const message = (mode: FloodMode): Uint8Array => mode === 'garbage' ? randomBytes(200) : mode === 'replay' ? replay : advert(++seq)

  for await (const line of createInterface({ input: process.stdin })) {
    const command = JSON.parse(line) as FlooderCommand
    let published = 0
    const end = Date.now() + command.windowMs
    if (command.cmd === 'idle') {
      await new Promise(resolve => setTimeout(resolve, command.windowMs))
    } else {
      const perTick = Math.max(1, Math.round(command.perSecond * TICK_MS / 1000))
      for (let tick = 0; Date.now() < end; tick++) {
        await Promise.all(Array.from({ length: perTick }, async () => {
          await pubsub.publish(topic, message(command.mode)).catch(() => {})
          published++
        }))
        const nextAt = end - command.windowMs + (tick + 1) * TICK_MS
        await new Promise(resolve => setTimeout(resolve, Math.max(0, nextAt - Date.now())))
      }
    }
    say({ event: 'done', published })
  }
  await node.stop()
}

main().catch(err => {
  process.stderr.write(`advert flooder failed: ${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
