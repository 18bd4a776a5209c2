"""GLoRIA's functions, transcribed line by line (Huang et al., ICCV 2021; the GLoRIA repository's
`gloria/loss/gloria_loss.py`, `gloria/models/gloria_model.py` and `gloria/gloria.py`): the one
oracle every test that compares cmgl with GLoRIA imports. Run it in float64.

Layouts are GLoRIA's but for the word tensor, which is cmgl's [T, W, D] (GLoRIA's `words_emb` is
[T, D, W], transposed here once): slot 0 holds [CLS], then the words, then [SEP], then zero
padding, as GLoRIA's `BertEncoder.aggregate_tokens` lays them out. Regions are [I, R, D]
(GLoRIA's [I, D, ih, iw], flattened the same way).

Slots: the training loss takes `words_emb[i, :, :cap_len]` (its `_calc_local_loss` sets cap_len =
the words + 1, so [CLS] + the words); the zero-shot score takes `text_emb_l[i, :, 1:cap_len + 1]`
(the words + [SEP] for the same cap_len).
"""
import torch
import torch.nn as nn


def cosine_similarity(x1, x2, dim=1, eps=1e-8):
    """gloria_loss.cosine_similarity."""
    w12 = torch.sum(x1 * x2, dim)
    w1 = torch.norm(x1, 2, dim)
    w2 = torch.norm(x2, 2, dim)
    return (w12 / (w1 * w2).clamp(min=eps)).squeeze()


def attention_fn(query, context, temp1):
    """gloria_loss.attention_fn; query [I, D, W], context [I, D, R]."""
    batch_size, query_len, source_len = query.size(0), query.size(2), context.size(2)
    context_t = torch.transpose(context, 1, 2).contiguous()
    attn = torch.bmm(context_t, query).view(batch_size * source_len, query_len)
    attn = nn.Softmax(dim=-1)(attn).view(batch_size, source_len, query_len)
    attn = torch.transpose(attn, 1, 2).contiguous().view(batch_size * query_len, source_len)
    attn = nn.Softmax(dim=-1)(attn * temp1).view(batch_size, query_len, source_len)
    return torch.bmm(context, torch.transpose(attn, 1, 2).contiguous())


def _row_cosines(word, img_features, gamma1):
    """[I, W]: each word's cosine with its attention-weighted region context, for every image."""
    n_images, words_num = word.shape[0], word.shape[2]
    wei_context = attention_fn(word, img_features, gamma1)
    word = word.transpose(1, 2).contiguous().view(n_images * words_num, -1)
    wei_context = wei_context.transpose(1, 2).contiguous().view(n_images * words_num, -1)
    return cosine_similarity(word, wei_context).view(n_images, words_num)


def _slot_cosines(words, cap_lens, regions, gamma1, first_slot):
    """Per text, [I, cap_len] row_sim of the slots first_slot..first_slot + cap_len, as GLoRIA's loops."""
    n_images = regions.shape[0]
    words_emb, img_features = words.transpose(1, 2), regions.transpose(1, 2)
    for i in range(words_emb.shape[0]):
        words_num = cap_lens[i]
        word = words_emb[i, :, first_slot:first_slot + words_num].unsqueeze(0).contiguous().repeat(n_images, 1, 1)
        yield _row_cosines(word, img_features, gamma1)


def local_similarities(words, cap_lens, regions, gamma1=4.0, gamma2=5.0):
    """The similarities of gloria_loss.local_loss, as S [T, I]: slots :cap_len, log-sum-exp over them."""
    columns = [row_sim.mul(gamma2).exp().sum(dim=1, keepdim=True).log()
               for row_sim in _slot_cosines(words, cap_lens, regions, gamma1, first_slot=0)]
    return torch.cat(columns, 1).t()


def masked_local_similarities(words, word_mask, regions, gamma1=4.0, gamma2=5.0):
    """`local_similarities` for cmgl's layout: words [T, W, D] whose real slots are `word_mask`
    (not necessarily a prefix); the real words are gathered to the front first."""
    counts = word_mask.sum(1)
    packed = torch.zeros_like(words)
    for t in range(words.shape[0]):
        packed[t, :counts[t]] = words[t][word_mask[t]]
    return local_similarities(packed, counts.tolist(), regions, gamma1, gamma2)


def local_similarities_with_grads(words, word_mask, regions, grad, gamma1=4.0, gamma2=5.0):
    """S [T, I] and dL/dwords, dL/dregions for dL/dS = grad, all in float64 on the CPU: the oracle
    every backend's output and gradients are held to."""
    words = words.detach().double().cpu().requires_grad_(True)
    regions = regions.detach().double().cpu().requires_grad_(True)
    S = masked_local_similarities(words, word_mask.cpu(), regions, gamma1, gamma2)
    S.backward(grad.double().cpu())
    return S.detach(), words.grad, regions.grad


def get_local_similarities(words, cap_lens, regions, gamma1=4.0, gamma2=5.0):
    """gloria_model.get_local_similarities, as S [T, I]: slots 1..cap_len, log of the max over them."""
    columns = [torch.log(torch.max(row_sim.mul(gamma2).exp(), dim=1, keepdim=True).values)
               for row_sim in _slot_cosines(words, cap_lens, regions, gamma1, first_slot=1)]
    return torch.cat(columns, 1).t()


def get_global_similarities(img_emb_g, text_emb_g):
    """gloria_model.get_global_similarities (sklearn's cosine_similarity), as [I, T]."""
    img = img_emb_g / torch.norm(img_emb_g, 2, dim=1, keepdim=True)
    text = text_emb_g / torch.norm(text_emb_g, 2, dim=1, keepdim=True)
    return img @ text.T


def zero_shot_classification(img_emb_g, regions, class_texts, gamma1=4.0, gamma2=5.0):
    """gloria.zero_shot_classification: [I, C]; class_texts = [(text_emb_g [T, D], words, cap_lens)].

    Per class (local + global) / 2 over its prompts, the max over the prompts, then
    `utils.normalize` per class over the images."""
    class_similarities = []
    for text_emb_g, words, cap_lens in class_texts:
        global_similarities = get_global_similarities(img_emb_g, text_emb_g)
        local_similarities = get_local_similarities(words, cap_lens, regions, gamma1, gamma2).T
        similarities = (local_similarities + global_similarities) / 2
        class_similarities.append(similarities.max(dim=1).values)
    class_similarities = torch.stack(class_similarities, 1)
    mean, std = class_similarities.mean(0), class_similarities.std(0, unbiased=False)
    return (class_similarities - mean) / std


def global_loss(cnn_code, rnn_code, eps=1e-8, temp3=10.0):
    """gloria_loss.global_loss, returning loss0 + loss1 as its model sums them."""
    labels = torch.arange(cnn_code.shape[0])
    cnn_code, rnn_code = cnn_code.unsqueeze(0), rnn_code.unsqueeze(0)
    cnn_code_norm = torch.norm(cnn_code, 2, dim=2, keepdim=True)
    rnn_code_norm = torch.norm(rnn_code, 2, dim=2, keepdim=True)
    scores0 = torch.bmm(cnn_code, rnn_code.transpose(1, 2))
    norm0 = torch.bmm(cnn_code_norm, rnn_code_norm.transpose(1, 2))
    scores0 = (scores0 / norm0.clamp(min=eps) * temp3).squeeze()
    return nn.CrossEntropyLoss()(scores0, labels) + nn.CrossEntropyLoss()(scores0.transpose(0, 1), labels)


def local_loss_tail(similarity_text_by_image, temp3=10.0):
    """The end of gloria_loss.local_loss: its `similarities` are [images, captions]."""
    similarities = similarity_text_by_image.T * temp3
    labels = torch.arange(similarities.shape[0])
    return nn.CrossEntropyLoss()(similarities, labels) + nn.CrossEntropyLoss()(similarities.transpose(0, 1), labels)


def ragged_batch(n_texts, n_images, n_words, n_regions, dim, seed, scale=1.0):
    """float64 words [T, W, D] (the first `lengths[t]` slots of text t real), their mask,
    regions [I, R, D], lengths; one text with every slot and one with a single slot."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_words + 1, (n_texts,), generator=g)
    lengths[0] = n_words
    lengths[-1] = 1
    word_mask = torch.arange(n_words)[None, :] < lengths[:, None]
    words = scale * torch.randn(n_texts, n_words, dim, generator=g, dtype=torch.float64)
    regions = scale * torch.randn(n_images, n_regions, dim, generator=g, dtype=torch.float64)
    return words, word_mask, regions, lengths.tolist()


def aggregate_tokens(embeddings, caption_ids, idxtoword):
    """`BertEncoder.aggregate_tokens`: [B, layers, L, H] token features -> the same with each word's
    pieces summed into one slot ([CLS], the words, [SEP]), then zero padding to L."""
    batch_size, num_layers, num_words, dim = embeddings.shape
    embeddings = embeddings.permute(0, 2, 1, 3)
    agg_embs_batch = []
    for embs, caption_id in zip(embeddings, caption_ids):
        agg_embs = []
        token_bank = []
        for word_emb, word_id in zip(embs, caption_id):
            word = idxtoword[word_id.item()]
            if word == "[SEP]":
                new_emb = torch.stack(token_bank)
                new_emb = new_emb.sum(axis=0)
                agg_embs.append(new_emb)
                agg_embs.append(word_emb)
                break
            if not word.startswith("##"):
                if len(token_bank) == 0:
                    token_bank.append(word_emb)
                else:
                    new_emb = torch.stack(token_bank)
                    new_emb = new_emb.sum(axis=0)
                    agg_embs.append(new_emb)
                    token_bank = [word_emb]
            else:
                token_bank.append(word_emb)
        agg_embs = torch.stack(agg_embs)
        padding_size = num_words - len(agg_embs)
        paddings = torch.zeros(padding_size, num_layers, dim, dtype=agg_embs.dtype)
        agg_embs_batch.append(torch.cat([agg_embs, paddings]))
    return torch.stack(agg_embs_batch).permute(0, 2, 1, 3)


def sentence_embedding(hidden_states, caption_ids, idxtoword, last_n_layers=4):
    """`BertEncoder.forward`'s sentence feature before `emb_global` (aggregate_method 'sum'): the last
    n hidden states, pieces aggregated, the mean over all L positions, summed over the layers."""
    embeddings = torch.stack(hidden_states[-last_n_layers:])
    embeddings = embeddings.permute(1, 0, 2, 3)
    embeddings = aggregate_tokens(embeddings, caption_ids, idxtoword)
    sent_embeddings = embeddings.mean(axis=2)
    return sent_embeddings.sum(axis=1)
