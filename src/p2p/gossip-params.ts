// The gossipsub mesh the agents run, as plain data: src/p2p/node.ts configures libp2p with it and the simulator
// (test/sim/systems.ts) models advert propagation with the same degree.
//
// Why not gossipsub's default mesh (D 6, Dlo 4, Dhi 12, Dlazy 6): adverts are small and frequent,
// and an agent pays the whole libp2p receive path (noise, yamux, protobuf, gossipsub) for every copy, duplicates
// included, before the message-id check drops them. In the 8-host testbed wave an agent received each advert
// about 2.5 times (4.4 with think times), and the control plane (gossip, its streams) was about a quarter of the
// agents' CPU (perf). With a mesh of 3 an advert still reaches N agents in about log3(N) hops, at well under 1 ms
// of processing each, and IHAVE gossip (Dlazy) repairs what a thin mesh misses under churn.
// The publisher still sends its own advert to every topic peer (gossipsub's flood publishing, the default): a new
// subscriber's mesh forms only at the next gossip heartbeat, and with mesh-only publishing a fresh wave's agents
// learned who had the manifest 1-3 s late (instance.create took 2.4-4.8 s on some host in 4 of 6 waves, at most
// 0.83 s with flooding), and a leader's 'booting' could reach a peer after its idle prefetch had run.

/** Mesh degree: the number of topic peers an agent forwards each message to. */
export const GOSSIP_D = 3
export const GOSSIP_MESH = {
  D: GOSSIP_D,
  Dlo: 2,
  Dhi: 5,
  Dlazy: 3,
  // Dout must stay below Dlo and at most D / 2; Dscore at most D.
  Dout: 1,
  Dscore: 1,
  floodPublish: true
} as const

/**
 * libp2p's connection monitor pings every connection every 10 s by default, each ping a new stream (protocol
 * negotiation, a peer store write): about one per second per agent with 8 peers. Parents and candidates are
 * probed by the agents' own heartbeat (src/p2p/heartbeat.ts, on the block link); the monitor only needs to find
 * connections that went silent.
 */
export const CONNECTION_PING_INTERVAL_MS = 60_000
