{"alg":"ed25519","key_id":"46f095e27e13f9dc","sig":"7IkpmN7xOX+TQQoAC/X8Bq4GEA16Yq57FWaUKknViPkLxpxdV8vEjFdkkWPv48b91Mg1uTsuTrtmP/Iu+aYPCQ=="}
