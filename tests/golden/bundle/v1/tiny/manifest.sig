{"alg":"ed25519","key_id":"46f095e27e13f9dc","sig":"bTo1adr1qfMhVMw2EyR0woXM42/1W+MGdbaUCPUTvqpef62U/nB6Z18hkxTkYPW0Fnsc8Jy0Y3NYVXSpuDoKBA=="}
